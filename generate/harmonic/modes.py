"""Renormalized modes paired with their harmonic selves by eigenvector overlap, q-point by q-point,
and the frequency-shift targets computed from those pairs.

Pairing sorted spectra by rank mislabels every band crossing the renormalization causes (a soft
optical mode hardening past an acoustic one); pairing by eigenvector does not. At each q the
overlap of harmonic mode i with renormalized mode j is summed over j's degenerate subspace (a
basis inside it is arbitrary), and the assignment maximizing the total overlap is taken
(Hungarian algorithm).
"""

from __future__ import annotations

import numpy as np

DEGENERACY_THZ = 1e-3  # frequencies closer than this form one degenerate subspace


def _modes(phonon, q) -> tuple[np.ndarray, np.ndarray]:
    from generate.harmonic.embedding import signed_frequencies_THz

    phonon.dynamical_matrix.run(q)
    matrix = phonon.dynamical_matrix.dynamical_matrix
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.conj().T))
    return signed_frequencies_THz(values), vectors


def _subspace_overlaps(harmonic_vectors, renormalized_vectors, renormalized_frequencies) -> np.ndarray:
    overlap = np.abs(harmonic_vectors.conj().T @ renormalized_vectors) ** 2  # (harmonic i, renormalized j)
    same = np.abs(renormalized_frequencies[:, None] - renormalized_frequencies[None, :]) < DEGENERACY_THZ
    return overlap @ same.astype(float)  # column j: overlap with j's whole degenerate subspace


def pair_modes(nu_h, e_h, nu_r, e_r) -> tuple[np.ndarray, np.ndarray]:
    """For each harmonic mode (columns of ``e_h``), the frequency of its renormalized partner and their
    overlap, the pairing maximizing the total overlap."""
    from scipy.optimize import linear_sum_assignment

    overlap = _subspace_overlaps(np.asarray(e_h), np.asarray(e_r), np.asarray(nu_r))
    rows, cols = linear_sum_assignment(-overlap)  # rows come back as 0..n-1
    return np.asarray(nu_r)[cols], overlap[rows, cols]


def matched_frequencies(harmonic_phonon, renormalized_phonon, qpoints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(harmonic ν, renormalized ν of the paired mode, overlap of each pair), each (n_q, n_bands),
    harmonic bands sorted; both phonopy objects must share the primitive cell atom for atom."""
    harmonic, matched, overlaps = [], [], []
    for q in np.asarray(qpoints, float):
        nu_h, e_h = _modes(harmonic_phonon, q)
        partner, overlap = pair_modes(nu_h, e_h, *_modes(renormalized_phonon, q))
        harmonic.append(nu_h)
        matched.append(partner)
        overlaps.append(overlap)
    return np.array(harmonic), np.array(matched), np.array(overlaps)


def frequency_shifts(harmonic: np.ndarray, matched: np.ndarray, n_imaginary: int, min_frequency_THz: float):
    """Mean (signed) and max (absolute) relative shift (ν_ren - ν_harm)/ν_harm over paired modes.

    Only defined for a harmonically stable crystal (no harmonic imaginary modes). Modes with harmonic
    ν below ``min_frequency_THz`` (acoustic modes at Γ, numerical noise) are left out so tiny
    denominators do not dominate. Returns (mean, max, n_modes, null_reason).
    """
    if n_imaginary > 0:
        return None, None, 0, f"{n_imaginary} harmonic imaginary mode(s): no harmonic reference frequency"
    h, r = np.ravel(harmonic), np.ravel(matched)
    keep = h >= min_frequency_THz
    if not keep.any():
        return None, None, 0, f"no harmonic mode above {min_frequency_THz} THz"
    shift = (r[keep] - h[keep]) / h[keep]
    return float(shift.mean()), float(np.abs(shift).max()), int(keep.sum()), None
