"""Unphysical or unusable settings and structures are refused when a command starts, naming the field."""

import re
import subprocess
import sys

import pytest
from ase import Atoms
from ase.io import write

from generate.run.checks import SettingsError
from tests.test_pipeline import REPO, compose


def kappa_main(*overrides):
    from generate.kappa.__main__ import run_command
    from generate.run.config import compose

    return run_command(compose("kappa", ["structure=Cu", "potential=emt", "relax_structure=false", "out=unused.json", *overrides]))


def sscha_main(*overrides, potential="emt"):
    from generate.run.config import compose
    from generate.sscha.__main__ import run_command

    return run_command(compose("sscha", ["structure=Cu", f"potential={potential}", "relax_structure=false", "out=unused.json",
                                         *overrides]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["temperatures_K=[-5.0]"], r"kappa.temperatures_K\[0\] = -5.0: a temperature in kelvin cannot be negative"),
        (["temperatures_K=[0]"], r"kappa.temperatures_K\[0\] = 0 K: no phonons .* κ is infinite"),
        (["kappa.q_mesh=[0,0,0]"], r"kappa.q_mesh\[0\] must be > 0"),
        (["kappa.fc3_supercell_matrix=[0,2,2]"], r"kappa.fc3_supercell_matrix\[0\] must be > 0"),
        (["kappa.fc3_supercell_matrix=[[1,0,0],[0,1,0],[1,0,0]]"], "singular"),
        (["sscha_supercell=[2,0,2]"], r"sscha_supercell\[1\] must be > 0"),
        (["sscha_supercell=[1,1,1]"], r"sscha_supercell = \[1, 1, 1\] is the cell itself .* samples Γ alone"),
        (["kappa.fc3_supercell_matrix=[1,1,1]"], r"kappa.fc3_supercell_matrix = \(1, 1, 1\) is the cell itself"),
        (["temperatures_K=[300,300]"], r"kappa.temperatures_K = \[300(\.0)?, 300(\.0)?\] lists 300 K more than once"),
        (["sscha.n_configurations=abc"], "sscha.n_configurations must be a number"),
        (["kappa.method=magic"], "kappa.method must be one of"),
    ],
)
def test_kappa_refuses_bad_settings_before_any_work(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=message):
        kappa_main(*args)
    assert not (tmp_path / "unused.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["temperature_K=-5"], r"sscha.temperature_K = -5.0: a temperature in kelvin cannot be negative"),
        (["temperature_K=0", "sscha.quantum=false"], "0 K with classical statistics: every atom is at rest"),
        (["supercell=[0,2,2]"], r"supercell\[0\] must be > 0"),
        (["supercell=[1,1,1]"], r"supercell = \[1, 1, 1\] is the cell itself \(determinant 1\): it samples Γ alone"),
        (["supercell=[[1,1,0],[0,1,0],[0,0,1]]"], "is the cell itself"),  # a sheared cell: the same lattice
        (["supercell=2"], r"supercell expects 3 integers or a 3x3 integer matrix \(e.g. \[2, 2, 2\]\), not 2"),
        (["harmonic.q_mesh=[0,0,0]"], r"q_mesh\[0\] must be > 0"),
        (["sscha.max_configurations=10"], "sscha.max_configurations = 10 is below sscha.n_configurations"),
        (["sscha.mixing=1.5"], r"sscha.mixing must lie in \(0, 1\]"),
        (["sscha=surrogate", "sscha.max_relative_force_error=-1"], r"sscha.max_relative_force_error must be > 0"),
        (["sscha=surrogate", "+sscha.surrogate.n_verificaton=4"], r"unknown sscha.surrogate setting\(s\) \['n_verificaton'\]"),
        (["sscha._target_=os.system"], "is not an engine class|known engines"),
    ],
)
def test_sscha_refuses_bad_settings_before_any_work(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=message):
        sscha_main(*args)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["temperatures_K=[-5.0]"], r"temperatures_K\[0\] = -5.0"),
        (["supercell.min_atoms=64", "supercell.max_atoms=32"], "supercell.min_atoms = 64 exceeds supercell.max_atoms = 32"),
        (["supercell.matrix=[[1,0,0],[0,1,0],[0,0,0]]"], "supercell.matrix .* is singular"),
        (["supercell.matrix=[1,1,1]"], r"supercell.matrix = \[1, 1, 1\] is the cell itself .* samples Γ alone"),
        (["temperatures_K=[300,300]"], r"temperatures_K = \[300(\.0)?, 300(\.0)?\] lists 300 K more than once"),
        (["temperatures_K=[100,300,100]"], "lists 100 K more than once"),
        (["harmonic.q_mesh=[0,0,0]"], r"harmonic.q_mesh\[0\] must be > 0"),
        (["kappa=rta", "kappa.q_mesh=-30"], r"kappa.q_mesh expects three positive integers .* or a length in Å"),
        (["audit.kappa_q_mesh=[11,11]"], r"audit.kappa_q_mesh expects a list of three positive integers"),
        (["sscha.quantum=false", "temperatures_K=[0.0,300.0]"], "0 K with classical statistics"),
        (["relax.optimizer=NoSuchOptimizer"], "relax.optimizer 'NoSuchOptimizer' is not an ASE optimizer"),
    ],
)
def test_generator_checks_settings_when_it_starts(overrides, message, tmp_path):
    from generate.run.pipeline import run

    out = tmp_path / "run"
    with pytest.raises(SettingsError, match=message):
        run(compose("source.ids=[fcc-Cu]", "executor.kind=serial", f"out_dir={out}", *overrides), progress=False)
    assert not out.exists()  # nothing was started


def test_generator_refuses_a_cell_above_max_atoms_before_relaxing(tmp_path):
    from ase.build import bulk

    from generate.run.pipeline import run
    from tests.test_pipeline import records_of

    structures = tmp_path / "structures"
    structures.mkdir()
    write(structures / "big.cif", bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3))  # 108 atoms
    out = tmp_path / "run"
    summary = run(compose("source=directory", f"source.directory={structures}", "executor.kind=serial",
                          f"out_dir={out}", "supercell.max_atoms=50"), progress=False)
    assert summary.n_failed == 1
    (record,) = records_of(out).values()
    assert record["stage"] == "check" and "supercell.max_atoms = 50 is below the 108 atoms" in record["reason"]


def water(tmp_path):
    path = tmp_path / "water.xyz"
    write(path, Atoms("OH2", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]]))
    return str(path)


def test_structure_checks_in_sscha_and_kappa(tmp_path, monkeypatch):
    from thermobench.potentials import UnsupportedStructureError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedStructureError, match="no periodic 3D cell"):
        kappa_main(f"structure={water(tmp_path)}", "relax_structure=true")
    with pytest.raises(UnsupportedStructureError, match="no periodic 3D cell"):
        sscha_main(f"structure={water(tmp_path)}", potential="m3gnet_mp")


def test_relax_names_a_molecule_and_a_corrupt_cif(tmp_path, shared):
    broken = tmp_path / "broken.cif"
    broken.write_text("data_broken\n_cell_length_a not-a-number\nthis is no CIF\n")
    for structure, message in ((water(tmp_path), "no periodic 3D cell"), (str(broken), "cannot read a crystal structure from")):
        done = subprocess.run([sys.executable, "-m", "generate.harmonic.relax", f"structure={structure}", f"hydra.run.dir={tmp_path / 'h'}"],
                              cwd=REPO, capture_output=True, text=True)
        assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_sscha_command_shows_its_steps(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="thermobench.sscha"):
        sscha_main("supercell=[2,2,2]", "sscha.n_configurations=10", "sscha.max_steps=2", "harmonic.q_mesh=[2,2,2]")
    steps = [r.getMessage() for r in caplog.records if r.name == "thermobench.sscha"]
    assert steps and steps[0].startswith("SSCHA 300 K step 0: F = ")
    assert (tmp_path / "unused.json").is_file()


def test_a_single_temperature_is_a_list_of_one_and_a_bad_one_is_named():
    from generate.run.config import checked_temperatures

    cfg = compose("temperatures_K=300")
    checked_temperatures(cfg)
    assert list(cfg.temperatures_K) == [300.0]
    with pytest.raises(SettingsError, match=r"temperatures_K\[0\] must be a number, not '300K'"):
        checked_temperatures(compose("temperatures_K=[300K]"))
    with pytest.raises(SettingsError, match=r"temperatures_K expects a non-empty list of temperatures in K"):
        checked_temperatures(compose("temperatures_K=[]"))


def test_generate_command_names_the_temperature_field_before_any_work(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "generate", "temperatures_K=[300K]", "source.ids=[fcc-Cu]", "potential=emt",
                           "executor.kind=serial", f"out_dir={out}", f"hydra.run.dir={tmp_path / 'h'}"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "temperatures_K[0] must be a number, not '300K'" in done.stderr, done.stderr[-2000:]
    assert not out.exists()


def structure_file(tmp_path, lattice="5.64 0 0 0 5.64 0 0 0 5.64", chlorine="2.82 2.82 2.82") -> str:
    path = tmp_path / "NaCl.xyz"
    path.write_text(f'2\nLattice="{lattice}" Properties=species:S:1:pos:R:3 pbc="T T T"\nNa 0 0 0\nCl {chlorine}\n')
    return str(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"chlorine": "nan 2.82 2.82"}, r"cartesian_site_positions\[1\]\[0\] is nan \(atom 1, Cl\)"),
    ({"lattice": "5.64 0 0 0 inf 0 0 0 5.64"}, r"lattice_vectors\[1\]\[1\] is inf \(lattice vector 1\)"),
])
def test_non_finite_numbers_in_a_structure_file_name_the_file_and_field(tmp_path, monkeypatch, changes, message):
    from generate.run.pipeline import run
    from tests.test_pipeline import records_of

    path = structure_file(tmp_path, **changes)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        sscha_main(f"structure={path}", "supercell=[2,2,2]")
    out = tmp_path / "run"  # the pipeline: the material's failure record, stage "load", before any relaxation
    summary = run(compose("source=directory", f"source.directory={tmp_path}", "executor.kind=serial", f"out_dir={out}"),
                  progress=False)
    assert summary.n_failed == 1
    (record,) = records_of(out).values()
    assert record["stage"] == "load" and re.search(message, record["reason"]) and path in record["reason"]


def test_kappa_takes_a_single_temperature_and_names_the_field_of_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"kappa.q_mesh\[0\] must be > 0"):  # 300 got past the temperature check
        kappa_main("temperatures_K=300", "kappa.q_mesh=[0,0,0]")
    with pytest.raises(SettingsError, match=r"kappa.temperatures_K\[0\] must be a number, not '300K'"):
        kappa_main("temperatures_K=[300K]")
