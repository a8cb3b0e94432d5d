"""The space-group average of supercell force constants, factored as lattice translations, then one
operation per rotation, and computed on one translation orbit of atom pairs: the pairs (p, j) with p
a representative of each primitive-cell site. That is N² gathered blocks for the translations and
|R|·N²/|T| for the rotations, instead of phonopy's |T|·|R| permuted copies of all N² (3,072 for a
64-atom fcc supercell), which made the average the SSCHA's most costly step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpaceGroupAverage:
    """Average over a supercell's space group G = ∪_r g_r T (T: its pure lattice translations, a
    normal subgroup; g_r: one operation per rotation), so that ⟨Φ⟩_G = ⟨g_r · ⟨Φ⟩_T⟩_r.

    Operation (R, perm) sends the pair (i, j) to (perm[i], perm[j]) with the block R Φ_ij Rᵀ, as in
    ``phonopy.harmonic.force_constants.symmetrize_force_constants_by_space_group``. Both averages are
    T-invariant, so they are computed on the reduced pairs (p_k, j), k < N/|T|, and spread by ``pair_index``.
    """

    rotations: np.ndarray  # (R, 3, 3) Cartesian rotations of the coset representatives
    translation_sources: tuple[np.ndarray, np.ndarray]  # (T, K·N) each: pairs (t⁻¹ p_k, t⁻¹ j) of each reduced pair
    rotation_sources: np.ndarray  # (R, K·N): reduced index of the pair (g_r⁻¹ p_k, g_r⁻¹ j)
    pair_index: np.ndarray  # (N, N): the reduced index of every pair

    @classmethod
    def of(cls, symmetry, lattice: np.ndarray) -> SpaceGroupAverage | None:
        """From a phonopy ``Symmetry`` of the supercell; None when G does not factor (then use phonopy's loop)."""
        from phonopy.utils import similarity_transformation

        rotations = np.asarray(symmetry.symmetry_operations["rotations"])
        permutations = np.asarray(symmetry.atomic_permutations)
        identity = np.all(rotations == np.eye(3, dtype=int), axis=(1, 2))
        translations = permutations[identity]  # translations[t, i]: where t sends atom i
        _, first = np.unique(rotations.reshape(len(rotations), -1), axis=0, return_index=True)
        first = np.sort(first)
        if len(translations) * len(first) != len(rotations):
            return None
        n = translations.shape[1]
        # Each atom's translation orbit is represented by its lowest index p_k, reached by translation t_i.
        to_representative = np.argmin(translations, axis=0)
        representative = translations[to_representative, np.arange(n)]
        representatives = np.unique(representative)
        if len(representatives) * len(translations) != n:  # T must act freely on the atoms
            return None
        k_of = np.searchsorted(representatives, representative)
        pair_index = k_of[:, None] * n + translations[to_representative, :]  # (i, j) -> (p_k, t_i j)
        inverses = np.argsort(translations, axis=1)
        reduced_i = np.repeat(representatives, n)
        reduced_j = np.tile(np.arange(n), len(representatives))
        rotation_inverses = np.argsort(permutations[first], axis=1)
        return cls(
            rotations=np.array([similarity_transformation(np.asarray(lattice).T, rotations[k]) for k in first]),
            translation_sources=(inverses[:, reduced_i], inverses[:, reduced_j]),
            rotation_sources=np.array([pair_index[inverse[reduced_i], inverse[reduced_j]] for inverse in rotation_inverses]),
            pair_index=pair_index,
        )

    def blocks(self, fc: np.ndarray) -> np.ndarray:
        """Average of force constants in phonopy's (..., N, N, 3, 3) layout."""
        fc = np.asarray(fc)
        source_i, source_j = self.translation_sources
        translated = fc[..., source_i, source_j, :, :].mean(axis=-4)  # (..., K·N, 3, 3)
        moved = translated[..., self.rotation_sources, :, :]  # (..., R, K·N, 3, 3)
        reduced = np.einsum("rab,...rkbc,rdc->...kad", self.rotations, moved, self.rotations, optimize=True)
        return reduced[..., self.pair_index, :, :] / len(self.rotations)
