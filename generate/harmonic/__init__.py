"""Harmonic stage: relax, phonopy phonons, DFT phonon data, fidelity, anchoring, reference, embedding, modes."""
