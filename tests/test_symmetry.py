"""The factored space-group average against phonopy's own loop over every operation."""

import numpy as np
import pytest

from generate.sscha import SSCHASettings, supercell_model
from generate.sscha.supercell import symmetrize_matrix, to_blocks, to_matrix
from thermobench.structures import load_structure


@pytest.mark.parametrize(("name", "matrix"), [("NaCl", [2, 2, 2]), ("Si", [2, 2, 2]), ("wurtzite-ZnO", [2, 2, 2]),
                                              ("rutile-SnO2", [2, 2, 2])])
def test_factored_average_equals_phonopy(name, matrix):
    """Symmorphic (NaCl) and non-symmorphic (diamond, wurtzite, rutile) groups; equal to round-off
    (1e-12 of the matrix scale: two summation orders of the same |G| terms)."""
    from phonopy.harmonic.force_constants import symmetrize_force_constants_by_space_group

    model = supercell_model(load_structure(name), matrix, SSCHASettings())
    assert model.average is not None
    rng = np.random.default_rng(0)
    n = 3 * model.n_atoms
    random = rng.normal(size=(2, n, n))
    fast = symmetrize_matrix(model, random, sum_rule=False)
    for one, expected_input in zip(fast, random, strict=True):
        fc = to_blocks(0.5 * (expected_input + expected_input.T))
        symmetrize_force_constants_by_space_group(fc, model.atoms.cell.array, model.symmetry)
        expected = to_matrix(fc)
        expected = 0.5 * (expected + expected.T)
        np.testing.assert_allclose(one, expected, atol=1e-12 * np.abs(expected).max())
