"""Small physics helpers of the dataset rows: supercell choice, mode thermodynamics, DOS, structure hash."""

from __future__ import annotations

import hashlib
import json

import numpy as np

# ----------------------------------------------------------------------------------------------
# Physics helpers


def choose_supercell(atoms, min_atoms: int, max_atoms: int, matrix=None, min_length_A: float = 0.0) -> np.ndarray:
    """Diagonal supercell: the smallest balanced one (by lattice-plane spacing) whose planes are at
    least ``min_length_A`` apart and that has ≥ ``min_atoms`` atoms; if that has more than
    ``max_atoms``, the largest balanced one that stays within it.

    The cell itself is never accepted: it samples Γ alone, and mesh frequencies interpolated from it
    are artefacts. When no larger balanced supercell fits ``max_atoms`` the error says so.
    """
    from generate.harmonic.phonons import supercell_matrix_for_min_length

    if matrix is not None:
        m = np.array(matrix, dtype=int)
        return np.diag(m) if m.ndim == 1 else m
    n = len(atoms)
    if n > max_atoms:
        raise ValueError(f"supercell.max_atoms = {max_atoms} is below the {n} atoms of the cell itself")
    below = None
    for length in np.arange(0.5, 80.0, 0.25):
        m = supercell_matrix_for_min_length(atoms, float(length))
        size = n * round(abs(np.linalg.det(m)))
        if size == n:
            continue  # Γ only
        if size > max_atoms:
            break
        below = m
        if size >= min_atoms and length >= min_length_A:
            break
    if below is None:
        raise ValueError(
            f"no supercell of this {n}-atom cell beyond the cell itself fits supercell.max_atoms = {max_atoms} "
            f"(the smallest balanced one has {size} atoms); the cell alone samples only Γ: raise supercell.max_atoms"
        )
    return below


def mode_thermodynamics(frequencies_THz: np.ndarray, temperature_K: float, n_atoms: int, tolerance_THz: float):
    """Quantum harmonic F (eV), S and Cv (k_B), per atom, of the modes above ``tolerance_THz``."""
    from ase import units

    h_eV_THz = 4.135667696e-3  # Planck constant in eV/THz
    nu = np.asarray(frequencies_THz)
    nu = nu[nu > tolerance_THz]
    energy = h_eV_THz * nu
    kT = units.kB * temperature_K
    if kT == 0:
        return float(np.sum(energy / 2) / n_atoms), 0.0, 0.0
    x = energy / kT
    free = np.sum(energy / 2 + kT * np.log(-np.expm1(-x)))
    entropy = np.sum(x / np.expm1(x) - np.log(-np.expm1(-x)))
    heat_capacity = np.sum(x**2 * np.exp(-x) / np.expm1(-x) ** 2)
    return float(free / n_atoms), float(entropy / n_atoms), float(heat_capacity / n_atoms)


def smeared_dos(frequencies_THz: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smeared DOS per primitive cell: integrates to the number of bands."""
    w = np.asarray(weights, float) / np.sum(weights)
    f = np.asarray(frequencies_THz)
    kernel = np.exp(-0.5 * ((grid[:, None, None] - f[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return np.einsum("gqb,q->g", kernel, w)


def structure_hash(atoms) -> str:
    payload = json.dumps(
        [atoms.get_chemical_symbols(), np.round(atoms.cell.array, 3).tolist(), np.round(atoms.positions, 3).tolist()]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
