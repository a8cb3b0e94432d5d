"""Bad input gets an error that names the problem, never a traceback from inside torch."""

import os

import pytest
from ase import Atoms
from ase.build import bulk

from thermobench.potentials import (
    PotentialNotFoundError,
    UnsupportedStructureError,
    evaluate_batch,
    load_calculator,
    load_potential,
)


@pytest.fixture(scope="module")
def potential(shared):
    return load_potential("M3GNet-MP-2021.2.8-PES")


def test_unknown_model_name_says_where_it_looked(shared, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PotentialNotFoundError) as error:
        load_potential("No-Such-Potential-PES")
    assert "No-Such-Potential-PES" in str(error.value)
    assert str(shared / "models") in str(error.value)


def test_unreachable_hub_fails_fast_with_the_reason(shared, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(PotentialNotFoundError, match=r"Hub \(http://127.0.0.1:9\) is unreachable"):
        load_potential("No-Such-Potential-PES")


def test_directory_without_model_files_is_named(tmp_path):
    with pytest.raises(PotentialNotFoundError, match="missing model.json"):
        load_potential(tmp_path)


def test_element_not_covered_is_named(potential):
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.symbols[0] = "Cm"  # curium: beyond the 89 elements of the model
    with pytest.raises(UnsupportedStructureError, match="Cm"):
        evaluate_batch(potential, [atoms])


def test_atoms_closer_than_half_an_angstrom(potential):
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.positions[1] = atoms.positions[0] + [0.3, 0.0, 0.0]
    with pytest.raises(UnsupportedStructureError, match=r"atoms 0 \(Na\) and 1 \(Cl\) are 0.300 A apart"):
        evaluate_batch(potential, [atoms])


def test_structure_without_periodic_cell(potential):
    molecule = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])
    with pytest.raises(UnsupportedStructureError, match="no periodic 3D cell"):
        evaluate_batch(potential, [molecule])


def test_atom_beyond_the_cutoff_of_every_neighbour_is_named(potential, shared):
    """bcc Cs at its experimental lattice (6.14 Å): 5.32 Å to its nearest neighbours, beyond M3GNet's 5 Å
    graph cutoff, so the potential sees a lone atom; its phonons came out NaN. Named in the batch (second
    structure), by the calculator and by the pre-relaxation check; compressed to 5.5 Å it is fine."""
    from thermobench.potentials import check_structure

    isolated, bonded = bulk("Cs", "bcc", a=6.141), bulk("Cs", "bcc", a=5.5)
    message = r"atom 0 \(Cs\) has no neighbour within the potential's 5 A cutoff"
    with pytest.raises(UnsupportedStructureError, match="structure 1: " + message):
        evaluate_batch(potential, [bonded, isolated])
    assert evaluate_batch(potential, [bonded]).forces_eV_A[0].shape == (1, 3)
    isolated.calc = load_calculator("M3GNet-MP-2021.2.8-PES")
    with pytest.raises(UnsupportedStructureError, match=message):
        isolated.get_potential_energy()
    with pytest.raises(UnsupportedStructureError, match="bcc-Cs: " + message):
        check_structure(isolated, ["Cs"], "bcc-Cs", cutoff_A=5.0)


def test_calculator_checks_too(shared):
    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])
    atoms.calc = load_calculator("M3GNet-MP-2021.2.8-PES")
    with pytest.raises(UnsupportedStructureError, match="no periodic 3D cell"):
        atoms.get_potential_energy()


def test_models_env_lists_several_directories(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("THERMOBENCH_MODELS", os.pathsep.join([str(tmp_path), str(shared / "models")]))
    potential = load_potential("TensorNet-MatPES-PBE-v2025.1-PES")
    assert type(potential.model).__name__ == "TensorNet"
