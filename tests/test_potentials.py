"""Parity of thermobench's potentials with the implementations the checkpoints were trained with."""

import numpy as np
import pytest
from ase.io import read
from conftest import CHECKPOINTS

from thermobench.potentials import evaluate_batch, load_calculator, load_potential

# Reference energies/forces come from matgl 1.1.3 (DGL, M3GNet) and matgl 2.0.4 (TensorNet) in
# float32; 1e-4 eV/atom and 1e-3 eV/A are about 100x the float32 noise seen between the stacks.
ENERGY_TOL_EV_ATOM = 1e-4
FORCE_TOL_EV_A = 1e-3


@pytest.fixture(scope="module", params=CHECKPOINTS)
def checkpoint(request, shared):
    name = request.param
    frames = read(shared / "reference" / "m3gnet-dgl-parity" / f"{name}.extxyz", ":")
    return name, load_potential(name), frames


def test_all_reference_structures_match_training_implementation(checkpoint):
    name, potential, frames = checkpoint
    assert len(frames) == 62
    result = evaluate_batch(potential, frames)
    for k, frame in enumerate(frames):
        label = frame.info["label"]
        de = abs(result.energies_eV[k] - frame.get_potential_energy()) / len(frame)
        df = np.abs(result.forces_eV_A[k] - frame.get_forces()).max()
        assert de <= ENERGY_TOL_EV_ATOM, f"{name} {label}: |dE| = {de:.2e} eV/atom"
        assert df <= FORCE_TOL_EV_A, f"{name} {label}: |dF| = {df:.2e} eV/A"


def test_calculator_stress_matches_reference_in_ev_per_a3(checkpoint):
    from ase import units

    name, _, frames = checkpoint
    calculator = load_calculator(name)
    for frame in frames[::7]:
        atoms = frame.copy()
        atoms.calc = calculator
        reference_gpa = frame.get_stress(voigt=False)  # the old PESCalculator default unit
        np.testing.assert_allclose(atoms.get_stress(voigt=False) / units.GPa, reference_gpa, atol=2e-3)
        np.testing.assert_allclose(atoms.get_forces(), frame.get_forces(), atol=FORCE_TOL_EV_A)


def test_batched_equals_one_by_one(shared):
    frames = read(shared / "reference" / "m3gnet-dgl-parity" / "M3GNet-MP-2021.2.8-PES.extxyz", ":")[:24]
    potential = load_potential("M3GNet-MP-2021.2.8-PES")
    # Small chunks force several batched passes, including structure boundaries inside a chunk.
    batched = evaluate_batch(potential, frames, max_atoms_per_chunk=40, compute_stress=True)
    for k, frame in enumerate(frames):
        single = evaluate_batch(potential, [frame], compute_stress=True)
        np.testing.assert_allclose(batched.forces_eV_A[k], single.forces_eV_A[0], atol=1e-5)
        assert abs(batched.energies_eV[k] - single.energies_eV[0]) <= 1e-5 * len(frame) + 1e-4
        np.testing.assert_allclose(batched.stresses_eV_A3[k], single.stresses_eV_A3[0], atol=1e-6)


def test_unpatched_matgl_is_wrong_on_compounds(shared):
    """Guards the reason for the compatibility layer: if matgl changes, this test says so."""
    import matgl

    name = "M3GNet-MP-2021.2.8-PES"
    frames = {f.info["label"]: f for f in read(shared / "reference" / "m3gnet-dgl-parity" / f"{name}.extxyz", ":")}
    raw = matgl.load_model(shared / "models" / name)
    nacl = frames["NaCl-rocksalt-primitive"]
    raw_energy = evaluate_batch(raw, [nacl]).energies_eV[0]
    assert abs(raw_energy - nacl.get_potential_energy()) / len(nacl) > 0.1


def test_shipped_fine_tuned_potential_loads_without_network(monkeypatch):
    from ase.build import bulk

    from thermobench.potentials import PACKAGED_MODELS, evaluate_batch, load_potential

    monkeypatch.setenv("THERMOBENCH_MODELS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    potential = load_potential("M3GNet-phonondb-PBEsol")
    assert potential.thermobench_info["path"] == str(PACKAGED_MODELS / "M3GNet-phonondb-PBEsol")
    assert (PACKAGED_MODELS / "M3GNet-phonondb-PBEsol" / "README.md").read_text().count("phonondb") >= 2
    result = evaluate_batch(potential, [bulk("NaCl", "rocksalt", a=5.6)])
    assert abs(result.forces_eV_A[0]).max() < 1e-4  # every atom at an inversion centre: zero force by symmetry
