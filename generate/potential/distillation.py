"""Thermal supercells labelled by the base potential anchored on DFT's harmonic part: the fine-tune's guard
on anharmonicity.

phonondb's displaced supercells (0.01 Å) constrain only the curvature at equilibrium; nothing in that loss
holds the cubic and quartic terms the SSCHA and κ sample. Each training material therefore also gets
supercells displaced as at ``temperature_K`` by DFT's own harmonic phonons (quantum Gaussian, ±u pairs),
labelled with the force change of the base potential anchored on DFT (``generate/harmonic/anchoring.py``):

    ΔF(u) = F_base(R0 + u) − F_base(R0) + (Φ_base − Φ_DFT) u

Its harmonic part is DFT's, so it agrees with the DFT samples; its anharmonic part is the base model's, so
the fine-tune is asked to keep it. Φ_DFT and Φ_base come from phonopy's solution of the same displacement
dataset (DFT's forces, and the base model's on the same supercells), so their difference is scheme-free.
"""

from __future__ import annotations

import numpy as np

from generate.harmonic.dft_data import displaced_forces
from generate.harmonic.phonons import to_ase_atoms
from generate.sscha.supercell import THZ_PER_OMEGA, mode_variance

MIN_FREQUENCY_THZ = 0.5  # modes below (acoustic at Γ, nearly free) are not sampled: their Gaussian is unbounded


def dataset_force_constants(phonon, forces: np.ndarray) -> np.ndarray:
    """(3N, 3N) FC2 of ``phonon``'s displacement dataset with ``forces`` in place of its own (phonopy's solver)."""
    from phonopy import Phonopy

    copy = Phonopy(phonon.unitcell, supercell_matrix=phonon.supercell_matrix, primitive_matrix=phonon.primitive_matrix,
                   symprec=phonon.symmetry.tolerance, log_level=0)
    copy.dataset = phonon.dataset
    copy.forces = np.asarray(forces, float)
    copy.produce_force_constants()
    fc = np.asarray(copy.force_constants)
    n = fc.shape[0]
    return fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def thermal_displacements(fc_dft: np.ndarray, masses_amu: np.ndarray, temperature_K: float, n_pairs: int,
                          rng) -> np.ndarray | None:
    """``2 n_pairs`` displacement sets (±u, Å) of the supercell's harmonic phonons at ``temperature_K``
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
    amplitudes = rng.standard_normal((n_pairs, omega.size)) * np.sqrt(variance)
    u = (amplitudes @ vectors[:, sampled].T) * inverse_sqrt
    return np.concatenate([u, -u]).reshape(2 * n_pairs, -1, 3)


def anchored_thermal_samples(base, phonon, temperature_K: float, n_pairs: int, rng) -> tuple[list, np.ndarray] | None:
    """(supercells displaced as at ``temperature_K``, ΔF labels (2 n_pairs, N, 3)) about phonondb's perfect
    supercell, from the base potential anchored on the dataset's DFT FC2 (module docstring); None for a crystal
    unstable in DFT."""
    from generate.sscha.supercell import evaluate

    perfect = to_ase_atoms(phonon.supercell)
    cells, dft_forces = displaced_forces(phonon)
    fc_dft = dataset_force_constants(phonon, dft_forces)
    displacements = thermal_displacements(fc_dft, perfect.get_masses(), temperature_K, n_pairs, rng)
    if displacements is None:
        return None
    structures = [perfect] + [to_ase_atoms(c) for c in cells]
    for u in displacements:
        moved = perfect.copy()
        moved.positions = perfect.positions + u
        structures.append(moved)
    _, forces = evaluate(base, structures)
    forces = np.asarray(forces, float) - np.asarray(forces[0], float)  # the residual force at R0 removed
    fc_base = dataset_force_constants(phonon, forces[1 : 1 + len(cells)])
    flat = displacements.reshape(len(displacements), -1)
    labels = forces[1 + len(cells):] + (flat @ (fc_base - fc_dft).T).reshape(displacements.shape)
    return structures[1 + len(cells):], labels
