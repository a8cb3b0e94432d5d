"""The space-group average of supercell force constants, factored as lattice translations, then one
operation per rotation, on the translation-invariant rows only: about 2 + |R|/|T| copies of the matrix
instead of phonopy's |T|·|R| (3,072 for a 64-atom fcc supercell), which made the average the SSCHA's
most costly step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpaceGroupAverage:
    """Average over a supercell's space group G = ∪_r g_r T (T: its pure lattice translations, a
    normal subgroup; g_r: one operation per rotation), so that ⟨Φ⟩_G = ⟨g_r · ⟨Φ⟩_T⟩_r.

    Operation (R, perm) sends the pair (i, j) to (perm[i], perm[j]) with the block R Φ_ij Rᵀ, as in
    ``phonopy.harmonic.force_constants.symmetrize_force_constants_by_space_group``.
    """

    rotations: np.ndarray  # (R, 3, 3) Cartesian rotations of the coset representatives
    representatives: np.ndarray  # (P,): one atom per orbit of the translations (a primitive cell's atoms)
    # Every atom a is t_a(rep) for one translation t_a; a translation-invariant matrix is then fixed by its
    # representatives' rows, Φ[a, b] = Φ[rep(a), t_a⁻¹(b)] = compact[orbit[a], shifted[a, b]].
    orbit: np.ndarray  # (N,): index into representatives of each atom's orbit
    shifted: np.ndarray  # (N, N): t_a⁻¹(b)
    translations: np.ndarray  # (T, N): atomic permutations of the pure translations
    rotation_rows: np.ndarray  # (R, P): orbit of g_r⁻¹(rep) for each rotation and representative
    rotation_columns: np.ndarray  # (R, P, N): shifted[g_r⁻¹(rep), g_r⁻¹(b)]

    @classmethod
    def of(cls, symmetry, lattice: np.ndarray) -> SpaceGroupAverage | None:
        """From a phonopy ``Symmetry`` of the supercell; None when G does not factor (then use phonopy's loop)."""
        from phonopy.utils import similarity_transformation

        rotations = np.asarray(symmetry.symmetry_operations["rotations"])
        permutations = np.asarray(symmetry.atomic_permutations)
        identity = np.all(rotations == np.eye(3, dtype=int), axis=(1, 2))
        translations = permutations[identity]
        _, first = np.unique(rotations.reshape(len(rotations), -1), axis=0, return_index=True)
        first = np.sort(first)
        if len(translations) * len(first) != len(rotations):
            return None
        n = translations.shape[1]
        orbit_min = translations.min(axis=0)  # pure translations act freely: orbits of |T| atoms each
        representatives = np.unique(orbit_min)
        if len(representatives) * len(translations) != n:
            return None
        orbit = np.searchsorted(representatives, orbit_min)
        # t_a: the translation sending a's representative to a; shifted[a] = t_a⁻¹ as a permutation
        t_of = np.argmax(translations[:, orbit_min] == np.arange(n)[None, :], axis=0)
        shifted = np.argsort(translations, axis=1)[t_of]
        inverses = np.argsort(permutations[first], axis=1)
        rows = inverses[:, representatives]  # (R, P): g_r⁻¹(rep)
        cartesian = np.array([similarity_transformation(np.asarray(lattice).T, rotations[k]) for k in first])
        return cls(
            rotations=cartesian,
            representatives=representatives,
            orbit=orbit,
            shifted=shifted,
            translations=translations,
            rotation_rows=orbit[rows],
            rotation_columns=np.take_along_axis(shifted[rows], inverses[:, None, :], axis=2),
        )

    def blocks(self, fc: np.ndarray) -> np.ndarray:
        """Average of force constants in phonopy's (..., N, N, 3, 3) layout."""
        fc = np.asarray(fc)
        # ⟨Φ⟩_T on the representatives' rows: Σ_t Φ[t(rep), t(b)]
        compact = np.zeros(fc.shape[:-4] + (len(self.representatives), fc.shape[-3], 3, 3), dtype=fc.dtype)
        for translation in self.translations:
            compact += fc[..., translation[self.representatives, None], translation[None, :], :, :]
        compact /= len(self.translations)
        # g_r · ⟨Φ⟩_T on the same rows: R ⟨Φ⟩_T[g⁻¹(rep), g⁻¹(b)] Rᵀ, read from the compact rows
        out = np.zeros_like(compact)
        for rotation, rows, columns in zip(self.rotations, self.rotation_rows, self.rotation_columns, strict=True):
            out += rotation @ compact[..., rows[:, None], columns, :, :] @ rotation.T
        out /= len(self.rotations)
        return out[..., self.orbit[:, None], self.shifted, :, :]
