"""The space-group average of supercell force constants, factored as lattice translations, then one
operation per rotation: |T| + |R| permuted copies instead of phonopy's |T|·|R| (3,072 for a
64-atom fcc supercell), which made the average the SSCHA's most costly step."""

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

    translation_inverses: np.ndarray  # (T, N): inverse permutations of the pure translations
    rotations: np.ndarray  # (R, 3, 3) Cartesian rotations of the coset representatives
    rotation_inverses: np.ndarray  # (R, N): their inverse atomic permutations

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
        cartesian = np.array([similarity_transformation(np.asarray(lattice).T, rotations[k]) for k in first])
        return cls(
            translation_inverses=np.argsort(translations, axis=1),
            rotations=cartesian,
            rotation_inverses=np.argsort(permutations[first], axis=1),
        )

    def blocks(self, fc: np.ndarray) -> np.ndarray:
        """Average of force constants in phonopy's (..., N, N, 3, 3) layout."""
        fc = np.asarray(fc)
        translated = np.zeros_like(fc)
        for inverse in self.translation_inverses:
            translated += fc[..., inverse[:, None], inverse[None, :], :, :]
        translated /= len(self.translation_inverses)
        out = np.zeros_like(fc)
        for rotation, inverse in zip(self.rotations, self.rotation_inverses, strict=True):
            moved = translated[..., inverse[:, None], inverse[None, :], :, :]
            out += np.einsum("ab,...bc,dc->...ad", rotation, moved, rotation, optimize=True)
        return out / len(self.rotations)
