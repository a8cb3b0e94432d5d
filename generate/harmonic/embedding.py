"""Renormalized phonons on a fine q-mesh: harmonic force constants of a large supercell plus the
SSCHA's renormalization from the smaller one it was computed in.

    D_T(q) = D_harm,large(q) + [D_SSCHA,small(q) - D_harm,small(q)]

The harmonic force constants are long-ranged (cheap to get in a large supercell by finite
displacements); the anharmonic renormalization is short-ranged (it comes from the fluctuations of
nearby atoms), so its Fourier interpolation from the small supercell is accurate where the
harmonic one from that supercell is not. At the small supercell's commensurate q-points the
correction is exact; in the small supercell alone (large = small) this reduces to the SSCHA's own
interpolation.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def supercell_phonopy(cell: Atoms, supercell_matrix, primitive_matrix, symprec: float, force_constants: np.ndarray):
    """A phonopy object of ``cell`` in ``supercell_matrix`` holding ``force_constants`` (e.g. the
    SSCHA correction Φ_SSCHA - Φ_harm of the small supercell)."""
    from generate.harmonic.phonons import new_phonopy, to_phonopy_atoms

    phonon = new_phonopy(to_phonopy_atoms(cell), supercell_matrix, primitive_matrix, symprec)
    phonon.force_constants = force_constants
    return phonon


def signed_frequencies_THz(eigenvalues: np.ndarray) -> np.ndarray:
    """Frequencies (THz) of phonopy dynamical-matrix eigenvalues; imaginary ones as negative."""
    from phonopy.physical_units import get_physical_units

    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * get_physical_units().DefaultToTHz


def embedded_frequencies_THz(harmonic_large, correction, qpoints: np.ndarray) -> np.ndarray:
    """Frequencies (THz, imaginary as negative) of D_harm,large(q) + ΔD(q) at each q (reduced coordinates
    of the primitive cell); both phonopy objects must share the primitive cell, atom for atom."""
    a, b = harmonic_large.primitive, correction.primitive
    if len(a) != len(b) or not np.allclose(a.masses, b.masses) or not np.allclose(a.cell, b.cell, atol=1e-8):
        raise ValueError("the harmonic and correction phonopy objects have different primitive cells")
    difference = (a.scaled_positions - b.scaled_positions + 0.5) % 1 - 0.5
    if np.abs(difference).max() > 1e-6:
        raise ValueError("the harmonic and correction phonopy objects order the primitive atoms differently")
    out = []
    for q in np.asarray(qpoints, float):
        matrices = []
        for phonon in (harmonic_large, correction):
            phonon.dynamical_matrix.run(q)
            matrices.append(phonon.dynamical_matrix.dynamical_matrix)
        total = matrices[0] + matrices[1]
        out.append(signed_frequencies_THz(np.linalg.eigvalsh(0.5 * (total + total.conj().T))))
    return np.array(out)
