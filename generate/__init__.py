"""The thermobench generator, one package per stage of the pipeline (``python -m generate`` runs them all):
potential/ (fine-tuning), harmonic/ (relax, harmonic phonons, DFT data, fidelity, anchoring, reference),
sscha/, kappa/, run/ (settings, sources, records, runner, status) and dataset/ (assemble, card, publish)."""
