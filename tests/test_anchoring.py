"""The potential anchored on DFT's harmonic force constants (generate.harmonic.anchoring), against phonondb's DFT data.

The potential is ASE's EMT on phonondb's Cu2O (mp-361, VASP PBEsol): EMT covers Cu and O and is far from
DFT, so anchoring changes everything harmonic, which is what the tests must see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from generate.harmonic.anchoring import (
    AnchoringError,
    anchor,
    central_force_constants,
    dft_force_constants,
    match_sites,
    primitive_supercell_matrix,
)
from generate.harmonic.phonons import commensurate_qpoints, to_ase_atoms
from generate.sscha.direct import run_sscha
from generate.sscha.result import SSCHASettings
from generate.sscha.supercell import evaluate, frequencies_THz, supercell_model, to_blocks

PHONONDB = Path(__file__).parent / "data" / "phonondb"
CU2O = PHONONDB / "materials-id-361-cu2o-pn-3m-224.tar.lzma"
LII = PHONONDB / "materials-id-568273-lii-p6-3-mmc-194.tar.lzma"

# Round-off of frequencies from force constants of order 10 eV/Å² through phonopy's dynamical matrices and
# LAPACK: ~1e-8 THz; 1e-6 THz is the bound and still 5 orders below any physical difference.
FREQUENCY_ROUNDOFF_THZ = 1e-6


def dft(path):
    from generate.harmonic.dft_data import load_dft_dataset

    return load_dft_dataset(path)


def phonopy_of(cell, matrix, fc):
    from phonopy import Phonopy

    from generate.harmonic.phonons import to_phonopy_atoms

    phonon = Phonopy(to_phonopy_atoms(cell), supercell_matrix=np.asarray(matrix), primitive_matrix=np.eye(3))
    phonon.force_constants = fc
    return phonon


def frequencies_at(phonon, qpoints):
    phonon.run_qpoints(np.asarray(qpoints))
    return np.asarray(phonon.qpoints.frequencies)


@pytest.mark.parametrize("path, other", [(CU2O, [[3, 0, 0], [0, 3, 0], [0, 0, 3]]), (LII, [[3, 0, 0], [0, 3, 0], [0, 0, 2]])])
def test_dft_force_constants_reproduce_dft_at_every_commensurate_q_of_any_supercell(path, other):
    """In DFT's own supercell (on its primitive cell) and in another one, the force constants give DFT's own
    (Fourier-interpolated, no NAC) frequencies at that supercell's commensurate q-points."""
    reference = dft(path)
    reference.nac_params = None
    cell = to_ase_atoms(reference.primitive)
    for matrix in (primitive_supercell_matrix(reference), np.array(other)):
        fc = dft_force_constants(reference, cell, matrix)
        phonon = phonopy_of(cell, matrix, fc)
        qpoints = commensurate_qpoints(phonon)
        assert len(qpoints) == round(abs(np.linalg.det(matrix)))
        ours, theirs = frequencies_at(phonon, qpoints), frequencies_at(reference, qpoints)
        assert np.abs(ours - theirs).max() < FREQUENCY_ROUNDOFF_THZ


def test_dft_force_constants_refuse_a_cell_that_is_not_dfts_primitive():
    reference = dft(CU2O)
    cell = to_ase_atoms(reference.primitive)
    cell.positions[0] += 0.05
    with pytest.raises(AnchoringError, match="primitive cell"):
        dft_force_constants(reference, cell, np.eye(3, dtype=int) * 2)


@pytest.fixture(scope="module")
def anchored_cu2o():
    reference = dft(CU2O)
    cell = to_ase_atoms(reference.primitive)
    matrix = primitive_supercell_matrix(reference)
    model = supercell_model(cell, matrix, SSCHASettings())
    fc_dft = dft_force_constants(reference, cell, matrix)
    anchored, evaluations = anchor(EMT(), model, fc_dft)
    return reference, cell, matrix, model, fc_dft, anchored, evaluations


def test_anchored_harmonic_frequencies_are_dfts(anchored_cu2o):
    """The anchored potential's finite-displacement FC2 (the scheme that measured Φ_pot) has DFT's frequencies,
    in the supercell and at its commensurate q-points; EMT's own differ by THz."""
    reference, cell, matrix, model, fc_dft, anchored, _ = anchored_cu2o
    fc_anchored, _ = central_force_constants(model, anchored, 0.01)
    fc_emt, _ = central_force_constants(model, EMT(), 0.01)
    sqrt_m = np.outer(model.sqrt_masses, model.sqrt_masses)
    from generate.sscha.supercell import symmetrize_matrix, to_matrix

    fc_dft_sym = symmetrize_matrix(model, to_matrix(fc_dft))
    ours, dfts, emts = (frequencies_THz(fc / sqrt_m) for fc in (fc_anchored, fc_dft_sym, fc_emt))
    assert np.abs(ours - dfts).max() < FREQUENCY_ROUNDOFF_THZ
    assert np.abs(emts - dfts).max() > 1.0
    qpoints = commensurate_qpoints(phonopy_of(cell, matrix, fc_dft))
    reference.nac_params = None
    ours_q = frequencies_at(phonopy_of(cell, matrix, to_blocks(fc_anchored)), qpoints)
    assert np.abs(ours_q - frequencies_at(phonopy_of(cell, matrix, to_blocks(fc_dft_sym)), qpoints)).max() < FREQUENCY_ROUNDOFF_THZ
    # Against phonopy's own DFT frequencies: the SSCHA's symmetrization imposes the acoustic sum rule, which
    # DFT's FC2 obeys to ~1e-4 eV/Å² (its Γ acoustic modes sit at ~1e-7 THz, not 0): 1e-3 THz bounds that.
    assert np.abs(ours_q - frequencies_at(reference, qpoints)).max() < 1e-3


def test_anchored_forces_vanish_at_the_reference_and_are_minus_the_energy_gradient(anchored_cu2o):
    _, _, _, model, _, anchored, _ = anchored_cu2o
    energies, forces = anchored.evaluate_structures([model.atoms])
    assert np.abs(forces).max() < 1e-12
    assert energies[0] == pytest.approx(anchored.energy0_eV, abs=1e-12)

    rng = np.random.default_rng(7)
    atoms = model.atoms.copy()
    atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
    _, (f,) = anchored.evaluate_structures([atoms])
    # Central differences with h = 1e-4 Å: truncation ~h²·|V'''| ≪ 1e-5 eV/Å; EMT's energy is smooth.
    h, worst = 1e-4, 0.0
    for atom in range(0, len(atoms), 7):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            (e_plus, e_minus), _ = anchored.evaluate_structures([plus, minus])
            worst = max(worst, abs(-(e_plus - e_minus) / (2 * h) - f[atom, axis]))
    assert worst < 1e-5


def test_an_atom_displaced_towards_another_site_of_its_element_is_matched_until_it_is_nearer_that_one(anchored_cu2o):
    """An O moved 45 % of the way to the nearest other O site keeps its own (a Cu is nearer, which does not matter:
    sites of other elements are not candidates); at 55 % it is nearer the other O site and two atoms share it: its
    displacement cannot be told from its position, an OverlappingAtomsError, on which the SSCHA raises its
    stabilization floor as for the plain potential."""
    from generate.harmonic.anchoring import DisplacementTooLargeError
    from thermobench.potentials import OverlappingAtomsError

    _, _, _, model, _, _, _ = anchored_cu2o
    reference = model.atoms
    oxygens = np.flatnonzero(reference.numbers == 8)
    a, b = oxygens[0], oxygens[int(np.argmin(reference.get_distances(oxygens[0], oxygens[1:], mic=True))) + 1]
    vector = reference.get_distance(a, b, mic=True, vector=True)
    moved = reference.copy()
    moved.positions[a] += 0.45 * vector
    sites, u = match_sites(reference, moved)
    assert sites[a] == a and sites[b] == b
    np.testing.assert_allclose(u[a], 0.45 * vector, atol=1e-9)
    moved = reference.copy()
    moved.positions[a] += 0.55 * vector
    with pytest.raises(DisplacementTooLargeError, match=r"two atoms are nearest to one O site") as error:
        match_sites(reference, moved)
    assert isinstance(error.value, OverlappingAtomsError)


def test_atoms_are_matched_to_the_reference_by_position_not_index(anchored_cu2o):
    _, _, _, model, _, anchored, _ = anchored_cu2o
    rng = np.random.default_rng(3)
    atoms = model.atoms.copy()
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    atoms.positions[5] += atoms.cell.array[0]  # an atom in another image of the cell is the same atom
    order = rng.permutation(len(atoms))
    energies, forces = anchored.evaluate_structures([atoms, atoms[order]])
    assert energies[1] == pytest.approx(energies[0], abs=1e-9)
    assert np.abs(forces[1] - forces[0][order]).max() < 1e-9


def test_structures_the_reference_cannot_explain_are_refused_before_any_evaluation(anchored_cu2o):
    _, _, _, model, _, anchored, _ = anchored_cu2o
    strained = model.atoms.copy()
    strained.set_cell(strained.cell.array * 1.01, scale_atoms=True)
    with pytest.raises(AnchoringError, match="lattice"):
        anchored.evaluate_structures([strained])
    swapped = model.atoms.copy()
    numbers = swapped.numbers.copy()
    first_o, first_cu = int(np.flatnonzero(numbers == 8)[0]), int(np.flatnonzero(numbers == 29)[0])
    numbers[[first_o, first_cu]] = numbers[[first_cu, first_o]]
    swapped.numbers = numbers
    with pytest.raises(AnchoringError, match="nearest to one (O|Cu) site"):  # an O on a Cu site, a Cu on an O site
        match_sites(model.atoms, swapped)
    with pytest.raises(AnchoringError, match="atoms"):
        anchored.evaluate_structures([model.atoms[:-1]])


def test_anchoring_on_the_potentials_own_force_constants_reproduces_the_plain_sscha():
    """Φ_DFT := Φ_pot: the anchored potential is the plain one (up to its residual force, zero here by
    symmetry), so the same seeded SSCHA gives the same result to round-off."""
    reference = dft(CU2O)
    cell = to_ase_atoms(reference.primitive)
    matrix = np.eye(3, dtype=int) * 2
    settings = SSCHASettings(temperature_K=100.0, n_configurations=20, max_configurations=20, max_steps=3,
                             frequency_error_target_THz=None, min_frequency_THz=1.0)
    model = supercell_model(cell, matrix, settings)
    fc_emt, _ = central_force_constants(model, EMT(), settings.displacement_A)
    anchored, _ = anchor(EMT(), model, fc_emt)
    assert anchored.residual_max_force_eV_A < 1e-10  # every site of cuprite is fixed by symmetry
    _, (plain_forces,) = evaluate(EMT(), [model.atoms])
    start = (to_blocks(fc_emt), 0)
    plain = run_sscha(cell, EMT(), matrix, settings, harmonic=start)
    same = run_sscha(cell, anchored, matrix, settings, harmonic=start)
    assert np.abs(plain.force_constants_eV_A2 - same.force_constants_eV_A2).max() < 1e-8
    assert same.free_energy_eV_atom == pytest.approx(plain.free_energy_eV_atom, abs=1e-9)
    assert np.abs(plain_forces).max() < 1e-10
