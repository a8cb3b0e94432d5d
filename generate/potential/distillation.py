"""The fine-tune's guard on anharmonicity: force combinations of thermal supercells, labelled by the base model.

phonondb's displaced supercells (0.01 Å) constrain only the curvature at equilibrium; nothing in that loss holds
the cubic and quartic terms the SSCHA and κ sample. Each training material therefore also gets supercells
displaced as at ``temperature_K`` by DFT's own harmonic phonons (quantum Gaussian; u drawn once per material), and
two combinations of their force changes ΔF(s·u) = F(R0 + s·u) − F(R0) in which the harmonic term cancels exactly:

    cubic   ΔF(u) + ΔF(−u)                              = −Φ3:uu         + O(u⁴)
    quartic ΔF(u) − ΔF(−u) − 2ΔF(u/2) + 2ΔF(−u/2)       = −¼ Φ4:uuu      + O(u⁵)

(F = −Φu − ½Φ3:uu − ⅙Φ4:uuu − …). Labelled by the base model, they ask the fine-tune to keep the base's cubic
and quartic terms along thermal directions while the DFT data move its curvature; neither needs any harmonic
force constants of the model (four base evaluations per draw). DFT's FC2 only chooses the directions and amplitudes.
"""

from __future__ import annotations

import numpy as np

from generate.harmonic.dft_data import displaced_forces
from generate.harmonic.phonons import to_ase_atoms
from generate.sscha.supercell import THZ_PER_OMEGA, mode_variance

MIN_FREQUENCY_THZ = 0.5  # modes below (acoustic at Γ, nearly free) are not sampled: their Gaussian is unbounded
# (scale of the displacement, coefficient of its force change) per combination, the first the sample's own supercell
# (coefficient 1); Σ c·s = 0 cancels the harmonic term
COMBINATIONS = {
    "cubic": ((1.0, 1.0), (-1.0, 1.0)),
    "quartic": ((1.0, 1.0), (-1.0, -1.0), (0.5, -2.0), (-0.5, 2.0)),
}


def dataset_force_constants(phonon, forces: np.ndarray) -> np.ndarray:
    """(3N, 3N) FC2 of ``phonon``'s displacement dataset with ``forces`` in place of its own (phonopy's solver for
    single displacements, symfc for random ones: some phonondb sets are of the second kind)."""
    from generate.harmonic.dft_data import produce_force_constants
    from generate.harmonic.fidelity import same_setup_phonopy

    copy = same_setup_phonopy(phonon, phonon.unitcell)
    copy.dataset = phonon.dataset
    copy.forces = np.asarray(forces, float)
    produce_force_constants(copy, full=True)
    fc = np.asarray(copy.force_constants)
    n = fc.shape[0]
    return fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def thermal_displacements(fc_dft: np.ndarray, masses_amu: np.ndarray, temperature_K: float, n_draws: int,
                          rng) -> np.ndarray | None:
    """``n_draws`` displacement sets u (Å, (n_draws, N, 3)) of the supercell's harmonic phonons at ``temperature_K``
    (quantum occupations); None when DFT's FC2 has an imaginary mode (no thermal ensemble exists)."""
    inverse_sqrt = 1.0 / np.sqrt(np.repeat(masses_amu, 3))
    dynamical = 0.5 * (fc_dft + fc_dft.T) * np.outer(inverse_sqrt, inverse_sqrt)
    values, vectors = np.linalg.eigh(dynamical)
    frequencies = np.sign(values) * np.sqrt(np.abs(values)) * THZ_PER_OMEGA
    if frequencies.min() < -MIN_FREQUENCY_THZ:
        return None
    sampled = frequencies >= MIN_FREQUENCY_THZ
    omega = np.sqrt(values[sampled])
    variance, _ = mode_variance(omega, temperature_K, quantum=True)
    amplitudes = rng.standard_normal((n_draws, omega.size)) * np.sqrt(variance)
    return ((amplitudes @ vectors[:, sampled].T) * inverse_sqrt).reshape(n_draws, -1, 3)


def combined(changes: dict[float, np.ndarray], name: str) -> np.ndarray:
    """The combination ``name`` of force changes ΔF(s·u), given by displacement scale s."""
    return sum(coefficient * changes[scale] for scale, coefficient in COMBINATIONS[name])


def guard_samples(base, phonon, material_id: str, temperature_K: float, n_draws: int, rng) -> list | None:
    """The guard's training samples of one phonondb material (module docstring): per thermal draw, one ``Sample``
    per combination, its supercells and coefficients in ``terms`` and the base model's value as its label; None
    for a crystal unstable in DFT."""
    from generate.potential.finetune import Sample
    from generate.sscha.supercell import evaluate

    perfect = to_ase_atoms(phonon.supercell)
    _, dft_forces = displaced_forces(phonon)
    displacements = thermal_displacements(dataset_force_constants(phonon, dft_forces), perfect.get_masses(),
                                          temperature_K, n_draws, rng)
    if displacements is None:
        return None
    scales = sorted({scale for terms in COMBINATIONS.values() for scale, _ in terms}, reverse=True)
    samples = []
    for u in displacements:
        moved = {}
        for scale in scales:
            moved[scale] = perfect.copy()
            moved[scale].positions = perfect.positions + scale * u
        _, forces = evaluate(base, [perfect] + [moved[s] for s in scales])
        changes = {s: np.asarray(f, float) - np.asarray(forces[0], float) for s, f in zip(scales, forces[1:], strict=True)}
        for name, terms in COMBINATIONS.items():
            samples.append(Sample(material_id, moved[terms[0][0]], combined(changes, name),
                                  terms=tuple((moved[s], c) for s, c in terms[1:]), guard=name))
    return samples
