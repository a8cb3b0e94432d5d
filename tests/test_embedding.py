"""The SSCHA correction embedded into a larger supercell's harmonic force constants (generate.harmonic.embedding)."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from generate.harmonic.embedding import supercell_phonopy, embedded_frequencies_THz
from generate.harmonic.phonons import HarmonicSettings, harmonic_phonons


def phonons(atoms, matrix):
    return harmonic_phonons(atoms, EMT(), HarmonicSettings(supercell_matrix=matrix, q_mesh=(4, 4, 4)))


def test_zero_correction_gives_the_large_supercell_and_equal_supercells_give_the_small_one():
    """Exact identities of D_large + (D_T - D_harm,small): a zero correction leaves the large
    supercell's harmonic mesh; with large = small, a correction gives phonopy's own frequencies of the
    corrected force constants. Both to 1e-6 THz (eigensolver round-off)."""
    atoms = bulk("Cu", "fcc", a=3.6)
    small = phonons(atoms, ((2, 0, 0), (0, 2, 0), (0, 0, 2)))
    large = phonons(atoms, ((4, 0, 0), (0, 4, 0), (0, 0, 4)))
    primitive = small.phonon.primitive_matrix
    fc_small = np.asarray(small.phonon.force_constants)

    zero = supercell_phonopy(atoms, np.diag([2, 2, 2]), primitive, 1e-5, np.zeros_like(fc_small))
    np.testing.assert_allclose(embedded_frequencies_THz(large.phonon, zero, large.mesh_qpoints), large.mesh_frequencies_THz,
                               atol=1e-6)

    hardened = 1.1 * fc_small  # a 5 % harder crystal as the "renormalized" force constants
    correction = supercell_phonopy(atoms, np.diag([2, 2, 2]), primitive, 1e-5, hardened - fc_small)
    embedded = embedded_frequencies_THz(small.phonon, correction, small.mesh_qpoints)
    np.testing.assert_allclose(embedded, np.sqrt(1.1) * small.mesh_frequencies_THz, atol=1e-6)


def test_different_primitive_cells_are_refused():
    atoms = bulk("Cu", "fcc", a=3.6)
    small = phonons(atoms, ((2, 0, 0), (0, 2, 0), (0, 0, 2)))
    other = bulk("Cu", "fcc", a=3.7)
    correction = supercell_phonopy(other, np.diag([2, 2, 2]), small.phonon.primitive_matrix, 1e-5,
                                    np.zeros_like(small.phonon.force_constants))
    with pytest.raises(ValueError, match="different primitive cells"):
        embedded_frequencies_THz(small.phonon, correction, small.mesh_qpoints)
