"""DFT phonon datasets of every layout: phonondb archives read in place, FORCE_SETS type 1 and 2, bad files."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase.calculators.calculator import all_changes

from generate.harmonic.dft_data import DatasetError, dataset_name, find_datasets, load_phonon_dataset
from generate.harmonic.validate_phonons import load_dft_dataset
from tests.test_sscha import Harmonic
from thermobench.phonondb import INDEX_PATH, MIRROR_COMMIT, SPLIT_FRACTIONS, read_index, select, split_of

FIXTURES = Path(__file__).parent / "data" / "phonondb"
SI = FIXTURES / "materials-id-149-si-fd-3m-227.tar.lzma"
NACL = FIXTURES / "materials-id-22862-nacl-fm-3m-225.tar.lzma"
LII = FIXTURES / "materials-id-568273-lii-p6-3-mmc-194.tar.lzma"
CM_TO_THZ = 0.0299792458


def gamma_frequencies(phonon, direction=None):
    phonon.run_qpoints([[0.0, 0.0, 0.0]], nac_q_direction=direction)
    return np.sort(phonon.get_qpoints_dict()["frequencies"][0])


def test_phonondb_silicon_raman_mode_against_experiment():
    """Si's triply degenerate Gamma optical mode: Raman 520.7 cm-1 (15.61 THz) at room temperature.

    PBEsol phonons of covalent semiconductors sit within ~3 % of experiment, which bounds the test.
    """
    phonon = load_dft_dataset(SI)
    optical = gamma_frequencies(phonon)[3:]
    np.testing.assert_allclose(optical, optical[0], atol=1e-6)  # cubic symmetry: degenerate
    assert abs(optical[0] / (520.7 * CM_TO_THZ) - 1) < 0.03
    assert dataset_name(SI) == "mp-149" and phonon.nac_params is not None


def test_phonondb_nacl_born_charges_give_the_lo_to_splitting():
    """NaCl: TO 164 cm-1 and LO 264 cm-1 (neutron scattering, Raunio & Almqvist 1969).

    The LO mode exists only through the BORN file; without it LO = TO. PBEsol's compressed lattice
    and the finite-displacement supercell put both within 8 % of experiment.
    """
    phonon = load_dft_dataset(NACL)
    near_gamma = gamma_frequencies(phonon, [1.0, 0.0, 0.0])
    to, lo = near_gamma[3], near_gamma[5]
    assert abs(to / (164 * CM_TO_THZ) - 1) < 0.08
    assert abs(lo / (264 * CM_TO_THZ) - 1) < 0.08
    phonon.nac_params = None
    assert np.ptp(gamma_frequencies(phonon, [1.0, 0.0, 0.0])[3:]) < 1e-3


def test_non_cubic_archive_keeps_its_primitive_axis_and_stability():
    phonon = load_dft_dataset(LII)
    assert len(phonon.primitive) == 4 and len(phonon.supercell) == len(phonon.unitcell) * round(np.linalg.det(phonon.supercell_matrix))
    phonon.run_mesh([6, 6, 6], is_gamma_center=True)
    assert phonon.get_mesh_dict()["frequencies"].min() > -0.1  # dynamically stable in the database


def test_type2_force_sets_are_read_and_give_the_type1_force_constants(tmp_path):
    """Random displacements of every atom (``phonopy --rd``) with exactly harmonic forces F = -Phi u.

    Fitting FC2 from them must give back the type-1 DFT frequencies: the forces are exactly
    harmonic, so only the fit's round-off remains (1e-4 THz bounds it with margin).
    """
    from phonopy.file_IO import write_FORCE_SETS

    reference = load_dft_dataset(NACL)
    reference.produce_force_constants()  # full (N, N, 3, 3) for the force model below
    reference.symmetrize_force_constants()
    reference.nac_params = None
    fc = reference.force_constants
    random = load_phonon_dataset(NACL)
    random.nac_params = None
    random.generate_displacements(distance=0.03, number_of_snapshots=4, random_seed=7)
    displacements = random.displacements
    forces = -np.einsum("iajb,njb->nia", fc.transpose(0, 2, 1, 3), displacements)
    folder = tmp_path / "nacl-rd"
    folder.mkdir()
    random.save(folder / "phonopy_disp.yaml")
    write_FORCE_SETS({"displacements": displacements, "forces": forces}, filename=folder / "FORCE_SETS")
    first_line = (folder / "FORCE_SETS").read_text().splitlines()[0].split()
    assert len(first_line) == 6  # type 2: displacement and force on every line

    fitted = load_dft_dataset(folder)
    mesh = [4, 4, 4]
    for phonon in (fitted, reference):
        phonon.run_mesh(mesh, is_gamma_center=True)
    np.testing.assert_allclose(fitted.get_mesh_dict()["frequencies"], reference.get_mesh_dict()["frequencies"], atol=1e-4)


def test_corrupt_and_incomplete_archives_are_named(tmp_path):
    truncated = tmp_path / "materials-id-1-xx-fm-3m-225.tar.lzma"
    truncated.write_bytes(SI.read_bytes()[:700])
    with pytest.raises(DatasetError, match=r"mp-1: materials-id-1-xx-fm-3m-225.tar.lzma is a corrupt or truncated archive"):
        load_phonon_dataset(truncated)

    import tarfile

    incomplete = tmp_path / "materials-id-2-yy-fm-3m-225.tar.xz"
    with tarfile.open(SI) as source, tarfile.open(incomplete, "w:xz") as target:
        for member in source.getmembers():
            if not member.name.endswith("FORCE_SETS"):
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
    with pytest.raises(DatasetError, match="mp-2: missing FORCE_SETS"):
        load_phonon_dataset(incomplete)


def test_finetune_reader_takes_archives_and_names_the_broken_one(tmp_path):
    from generate.potential.finetune import read_phonon_datasets

    shutil.copy(SI, tmp_path)
    shutil.copy(NACL, tmp_path)
    (tmp_path / "materials-id-3-zz-fm-3m-225.tar.lzma").write_bytes(b"not an archive")
    assert [dataset_name(p) for p in find_datasets(tmp_path)] == ["mp-149", "mp-22862", "mp-3"]
    data = read_phonon_datasets(tmp_path, ("Si", "Na", "Cl"))
    assert data.materials == ["mp-149", "mp-22862"]
    assert "corrupt" in data.skipped["mp-3"]
    si = [s for s in data.samples if s.material == "mp-149"]
    assert len(si) == 2 and len(si[0].atoms) == 64  # one displacement (diamond) + the perfect supercell


def test_split_is_fixed_by_the_mp_id_and_recorded_with_the_mirror_commit():
    entries = read_index()
    assert len(entries) == 10034 and len({e.material_id for e in entries}) == len(entries)
    assert all(e.split == split_of(e.material_id) for e in entries)
    assert len(MIRROR_COMMIT) == 40 and INDEX_PATH.is_file()
    n = len(entries)
    for split, fraction in SPLIT_FRACTIONS.items():
        count = sum(e.split == split for e in entries)
        # binomial standard deviation sqrt(n p (1-p)); 5 sigma
        assert abs(count - n * fraction) < 5 * np.sqrt(n * fraction * (1 - fraction))
    small_test = select(entries, "test", max_supercell_atoms=100)
    assert len(small_test) >= 300 and all(e.n_supercell <= 100 for e in small_test)
    assert {e.split for e in select(entries, "train", elements={"Si"})} == {"train"}
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        select(entries, "dev")


def test_phonondb_source_filters_and_gives_the_dft_cell():
    from generate.run.sources import phonondb_source

    everything = phonondb_source(FIXTURES)
    assert [m.source_id for m in everything] == ["mp-149", "mp-361", "mp-1000", "mp-22862", "mp-568273"]
    si = phonondb_source(FIXTURES, ids=["mp-149"])[0]
    atoms = si.atoms()
    assert si.material_id == "phonondb-mp-149" and si.formula == "Si" and si.source == "phonondb"
    assert len(atoms) == 2  # the primitive cell of diamond
    # PBEsol's relaxed cubic lattice constant of Si in the archive: a = sqrt(2) x the fcc primitive vector
    assert abs(np.sqrt(2) * atoms.cell.lengths()[0] - 5.4346) < 1e-3
    assert [m.source_id for m in phonondb_source(FIXTURES, spacegroups=[194])] == ["mp-568273"]
    assert [m.source_id for m in phonondb_source(FIXTURES, elements={"Na", "Cl", "Si"})] == ["mp-149", "mp-22862"]
    # filtered by chemistry, labelled by structure family (thermobench.prototypes)
    assert [m.family for m in phonondb_source(FIXTURES, families=["halides"])] == ["rocksalt", "other halides"]
    assert len(phonondb_source(FIXTURES, only_dft_stable=True, limit=2)) == 2
    with pytest.raises(KeyError, match="mp-0"):
        phonondb_source(FIXTURES, ids=["mp-0"])


def test_generator_runs_a_phonondb_material(tmp_path):
    from generate.run.pipeline import run
    from tests.test_pipeline import compose, records_of

    out = tmp_path / "run"
    summary = run(compose("source=phonondb", f"source.phonondb_dir={FIXTURES}", "source.ids=[mp-361]",
                          "executor.kind=serial", f"out_dir={out}", "supercell.min_atoms=6", "supercell.max_atoms=48",
                          "temperatures_K=[300.0]"), progress=False)
    assert summary.n_done + summary.n_failed == 1
    (record,) = records_of(out).values()
    assert record["material_id"] == "phonondb-mp-361" and record["source_id"] == "mp-361" and record["formula"] == "Cu2O"


def test_a_supercell_in_another_atom_order_is_carried_over(tmp_path):
    """An old phonopy wrote some phonondb supercells in another atom order: the same DFT data,
    permuted in disp.yaml and FORCE_SETS, must give the same frequencies (1e-4 THz: a symfc fit
    of exact finite differences)."""
    import yaml

    from generate.harmonic.dft_data import _read_files

    files = _read_files(NACL)
    natom = 64
    perm = np.random.default_rng(3).permutation(natom)  # new atom i is old atom perm[i]
    inverse = np.argsort(perm)
    disp = yaml.safe_load(files["disp.yaml"])
    key = "atoms" if "atoms" in disp else "points"
    disp[key] = [disp[key][j] for j in perm]
    for d in disp["displacements"]:
        d["atom"] = int(inverse[d["atom"] - 1]) + 1
    lines = files["FORCE_SETS"].decode().split("\n")
    out, k = lines[:3], 3
    while k < len(lines) and lines[k].strip():
        number = int(lines[k].split()[0])
        rows = lines[k + 2 : k + 2 + natom]
        out += [str(int(inverse[number - 1]) + 1), lines[k + 1], *[rows[j] for j in perm], ""]
        k += natom + 3
    folder = tmp_path / "permuted"
    folder.mkdir()
    for name in ("POSCAR-unitcell", "phonopy.conf", "BORN"):
        (folder / name).write_bytes(files[name])
    (folder / "disp.yaml").write_text(yaml.safe_dump(disp))
    (folder / "FORCE_SETS").write_text("\n".join(out) + "\n")

    permuted, original = load_dft_dataset(folder), load_dft_dataset(NACL)
    assert "displacements" in permuted.dataset  # carried over as a type-2 set
    for phonon in (permuted, original):
        phonon.run_mesh([4, 4, 4], is_gamma_center=True)
    np.testing.assert_allclose(permuted.get_mesh_dict()["frequencies"], original.get_mesh_dict()["frequencies"], atol=1e-4)


def _si_row(tmp_path, *overrides):
    import json

    from generate.run.pipeline import run
    from tests.test_pipeline import compose

    out = tmp_path / "run"
    summary = run(compose("source=phonondb", f"source.phonondb_dir={FIXTURES}", "source.ids=[mp-149]", "potential=m3gnet_mp",
                          "executor=serial", f"out_dir={out}", "temperatures_K=[300.0]", "sscha.n_configurations=20",
                          "sscha.max_steps=2", *overrides), progress=False)
    assert summary.n_done == 1
    (path,) = out.glob("*/records/*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert row["source"] == "phonondb" and row["source_id"] == "mp-149" and row["dft_dynamically_stable"]
    assert row["phonondb_split"] == "train" and row["dft_null_reason"] is None and row["family"] == "elemental nonmetals"
    reference = load_dft_dataset(FIXTURES / "materials-id-149-si-fd-3m-227.tar.lzma")
    reference.nac_params = None
    reference.run_mesh(row["q_mesh"], is_gamma_center=True)
    mesh = reference.get_mesh_dict()
    np.testing.assert_allclose(row["mesh_qpoints"], mesh["qpoints"], atol=1e-12)
    np.testing.assert_allclose(row["dft_mesh_frequencies_THz"], mesh["frequencies"], atol=1e-6)
    assert row["dft_min_frequency_THz"] == pytest.approx(mesh["frequencies"].min(), abs=1e-6)
    return row, reference, mesh


def test_phonondb_rows_carry_the_dft_harmonic_frequencies(tmp_path, shared):
    """harmonic_reference=potential: a phonondb crystal's rows hold phonondb's DFT frequencies on their own
    q-points (checked against phonopy's mesh of the same archive, 1e-6 THz), the potential's harmonic MAE
    against them, recomputed here from the row (1e-9 THz), both stability verdicts and the phonondb split."""
    row, _, mesh = _si_row(tmp_path, "harmonic_reference=potential", "supercell.min_atoms=16", "supercell.max_atoms=16",
                           "harmonic.supercell_max_atoms=54")
    assert row["harmonic_reference"] == "potential" and row["relax_converged"] is not None
    weights = np.asarray(row["mesh_weights"], float)
    mae = weights @ np.abs(np.asarray(row["harmonic_mesh_frequencies_THz"]) - mesh["frequencies"]).mean(axis=1) / weights.sum()
    assert row["potential_dft_mae_THz"] == pytest.approx(mae, abs=1e-9)
    assert row["potential_dft_mae_THz"] > 0.5  # M3GNet-MP is far too soft for Si (optical Γ 10.5 vs 15.3 THz in DFT)
    # At DFT's geometry (tested exactly on LiI below) M3GNet-MP's Si is still too soft: the error is its force constants'.
    assert row["potential_dft_mae_dft_geometry_THz"] > 0.5


def test_anchored_phonondb_rows_are_dfts_harmonic_phonons_at_dfts_geometry(tmp_path, shared):
    """harmonic_reference=dft (the default) in DFT's own 64-atom supercell: no relaxation, DFT's cell, DFT's
    harmonic frequencies on the mesh (Si's Born charges are ~0, so NAC changes nothing above 1e-3 THz), and
    the potential's own MAE at DFT's geometry beside them, as generate.harmonic.fidelity measures it independently
    (phonondb's forward displacement vs the anchoring's central ones: they differ by the cubic term,
    ~u·Φ₃/Φ₂ ≈ 1 % of a frequency, well inside 0.05 THz on an MAE of 2 THz)."""
    from generate.harmonic.fidelity import dft_geometry_mae
    from generate.harmonic.phonons import to_ase_atoms
    from thermobench.potentials import load_named_potential

    row, reference, mesh = _si_row(tmp_path, "supercell.max_atoms=64")
    assert row["harmonic_reference"] == "dft" and row["n_supercell_atoms"] == 64
    assert row["relax_converged"] is None and row["volume_change_vs_source"] == 0
    np.testing.assert_allclose(row["lattice_vectors"], to_ase_atoms(reference.primitive).cell.array, atol=1e-12)
    np.testing.assert_allclose(row["harmonic_mesh_frequencies_THz"], mesh["frequencies"], atol=1e-3)
    independent = dft_geometry_mae(reference, load_named_potential("M3GNet-MP-2021.2.8-PES").model, mesh["qpoints"],
                                   mesh["weights"], mesh["frequencies"])
    assert row["potential_dft_mae_THz"] == row["potential_dft_mae_dft_geometry_THz"]
    assert row["potential_dft_mae_THz"] == pytest.approx(independent, abs=0.05)
    assert row["potential_residual_max_force_eV_A"] < 1e-3  # diamond Si: no free coordinate, forces vanish by symmetry
    assert row["potential_residual_pressure_GPa"] != 0


class _HarmonicWithResidualForces(Harmonic):
    """F = -Φ u + f₀: force constants exactly DFT's, but a minimum away from DFT's geometry (a constant
    residual force f₀ on every atom, summing to zero)."""

    def __init__(self, reference_positions, force_constants, residual):
        super().__init__(reference_positions, force_constants)
        self.residual = residual

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        u = (self.atoms.positions - self.reference).reshape(-1)
        self.results["energy"] -= float(self.residual.reshape(-1) @ u)
        self.results["forces"] = self.results["forces"] + self.residual


def test_potential_at_the_dft_geometry_subtracts_its_residual_forces(tmp_path):
    """LiI (P6₃mc: Li and I on free z coordinates, phonondb displaces them +z only). A model with exactly
    DFT's force constants but at rest elsewhere (0.1 eV/Å along c on every atom at DFT's geometry, as
    the site symmetry allows) must give DFT's frequencies there, to the FC2 solver's round-off (1e-3 THz
    bounds it; any mix-up of cell, displacements or q-points costs ≳ 0.1 THz). The backfill writes the
    same number into a run's records and resumes (a second call writes nothing)."""
    import json

    from generate.harmonic.fidelity import COLUMN, backfill, dft_geometry_mae
    from generate.harmonic.phonons import to_ase_atoms

    reference = load_dft_dataset(LII)
    reference.nac_params = None
    full = load_dft_dataset(LII)
    full.produce_force_constants(calculate_full_force_constants=True)
    full.symmetrize_force_constants()
    supercell = to_ase_atoms(reference.supercell)
    residual = np.zeros((len(supercell), 3))
    residual[:, 2] = np.where(supercell.numbers == 3, 0.1, -0.1)  # one Li per I: no net force
    potential = SimpleNamespace(model=_HarmonicWithResidualForces(supercell.positions, np.asarray(full.force_constants), residual))
    reference.run_mesh([4, 4, 4], is_gamma_center=True)
    mesh = reference.get_mesh_dict()
    mae = dft_geometry_mae(reference, potential.model, mesh["qpoints"], mesh["weights"], mesh["frequencies"])
    assert mae < 1e-3

    rows = [{"potential": "model", "potential_sha256": "0", "mesh_qpoints": mesh["qpoints"].tolist(),
             "mesh_weights": mesh["weights"].tolist(), "dft_mesh_frequencies_THz": mesh["frequencies"].tolist(),
             "potential_dft_mae_THz": 0.2, "temperature_K": t} for t in (100.0, 300.0)]
    records = tmp_path / "run" / "fingerprint" / "records"
    records.mkdir(parents=True)
    record = {"status": "ok", "source": "phonondb", "source_id": "mp-568273", "material_id": "phonondb-mp-568273",
              "name": "LiI", "rows": rows}
    (records / "phonondb-mp-568273.json").write_text(json.dumps(record))
    (records / "failed.json").write_text(json.dumps({"status": "failed", "source": "phonondb", "source_id": "mp-1"}))
    assert backfill(tmp_path / "run", FIXTURES, potential, log=lambda _: None) == 1
    written = json.loads((records / "phonondb-mp-568273.json").read_text())["rows"]
    assert [r[COLUMN] for r in written] == pytest.approx([mae, mae], abs=1e-12)
    assert backfill(tmp_path / "run", FIXTURES, potential, log=lambda _: None) == 0
