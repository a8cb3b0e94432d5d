"""Generation pipeline: resumable records, failure records, Ray end to end, physics helpers.

Crystals are computed with ASE's EMT (fcc metals) and tiny settings so each run takes seconds; the
physics of relax/harmonic/SSCHA is tested in their own test files.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from generate.harmonic.modes import frequency_shifts
from generate.run.labels import choose_supercell, mode_thermodynamics
from generate.run.pipeline import run
from thermobench.potentials import load_named_potential

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "potential=emt",
    "sscha=direct",
    "supercell.min_length_A=0",
    "supercell.min_atoms=4",
    "supercell.max_atoms=8",
    "harmonic.supercell_max_atoms=27",
    "sscha.n_configurations=40",
    "sscha.max_steps=6",
    "harmonic.q_mesh=[4,4,4]",
    "dos.n_points=51",
    "relax.max_steps=50",
]


def compose(*overrides):
    from generate.run.config import compose as compose_config

    groups = {o.split("=")[0] for o in overrides if "." not in o.split("=")[0]}
    return compose_config("generate", [*(t for t in TINY if t.split("=")[0] not in groups), *overrides])


def records_of(out_dir: Path) -> dict:
    (run_folder,) = [p for p in out_dir.iterdir() if (p / "manifest.json").is_file()]
    return {p.stem: json.loads(p.read_text()) for p in (run_folder / "records").glob("*.json")}


def test_kill_midway_and_resume_loses_and_recomputes_nothing(tmp_path):
    out = tmp_path / "run"
    ids = "source.ids=[fcc-Cu,fcc-Al,fcc-Ni]"
    command = [sys.executable, "-m", "generate", *TINY, ids, "executor.kind=serial", f"out_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if out.is_dir() and any(out.glob("*/records/*.json")):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run finished before it could be killed; make it longer"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/records/*.json")}
    assert 1 <= len(first) < 3

    summary = run(compose(ids, "executor.kind=serial", f"out_dir={out}"), progress=False)
    assert summary.n_skipped == len(first)
    assert summary.n_done == 3 - len(first) and summary.n_failed == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/records/*.json")}
    assert len(after) == 3
    for name, state in first.items():
        assert after[name] == state, f"{name} was recomputed"
    assert {r["status"] for r in records_of(out).values()} == {"ok"}
    manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
    assert len(manifest["runs"]) == 2 and manifest["runs"][1]["n_skipped"] == len(first)

    # A third run with the same settings does nothing; changed settings go to a new folder.
    assert run(compose(ids, "executor.kind=serial", f"out_dir={out}"), progress=False).n_done == 0
    changed = run(compose("source.ids=[fcc-Cu]", "executor.kind=serial", f"out_dir={out}", "seed=1"), progress=False)
    assert changed.n_done == 1 and len([p for p in out.iterdir() if (p / "manifest.json").is_file()]) == 2


def test_runs_sharing_a_folder_keep_each_others_history(tmp_path):
    """Two runs into one settings folder (e.g. phonondb and the built-in metals): each writes only its own
    entry of the manifest's history, so neither drops the other's, however their writes interleave."""
    from generate.run.records import RunFolder

    folder = RunFolder(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"settings_fingerprint": "f", "runs": []}))
    first = {"started": 1.0, "pid": 11, "n_done": 0}
    second = {"started": 2.0, "pid": 22, "n_done": 0}
    folder.save_run(first)
    folder.save_run(second)
    first["n_done"] = 3
    folder.save_run(first)
    assert folder.manifest()["runs"] == [{"started": 1.0, "pid": 11, "n_done": 3}, second]
    assert folder.manifest()["settings_fingerprint"] == "f"


def test_dataset_version_is_part_of_the_settings_fingerprint():
    from generate.run.settings import fingerprint, settings_from_config

    first = settings_from_config(compose("dataset_version=0.1.0"))
    second = settings_from_config(compose("dataset_version=0.2.0"))
    assert first["dataset_version"] == "0.1.0"
    assert fingerprint(first, "sha") != fingerprint(second, "sha")


def test_broken_file_and_unsupported_element_give_failure_records(tmp_path):
    from ase.build import bulk
    from ase.io import write

    structures = tmp_path / "structures"
    structures.mkdir()
    write(structures / "copper-sample.cif", bulk("Cu", "fcc", a=3.6))  # a file name that is no formula
    write(structures / "NaCl.vasp", bulk("NaCl", "rocksalt", a=5.64), format="vasp")
    (structures / "broken.cif").write_text("data_broken\n_cell_length_a not-a-number\nthis is no CIF\n")
    out = tmp_path / "run"
    summary = run(
        compose("source=directory", f"source.directory={structures}", "executor.kind=serial", f"out_dir={out}"),
        progress=False,
    )
    assert (summary.n_done, summary.n_failed) == (1, 2)
    records = records_of(out)
    copper = records["file-copper-sample"]
    assert copper["status"] == "ok" and len(copper["rows"]) == 3
    assert {row["formula"] for row in copper["rows"]} == {"Cu"}  # from the structure, not the file name
    broken = records["file-broken"]
    assert broken["status"] == "failed" and broken["stage"] == "load"
    assert "broken.cif" in broken["reason"] and "Traceback" in broken["traceback"]
    unsupported = records["file-NaCl"]
    assert unsupported["status"] == "failed" and unsupported["stage"] == "check"
    assert "Cl" in unsupported["reason"] and "Na" in unsupported["reason"]


def test_two_crystals_end_to_end_on_local_ray(tmp_path):
    ray = pytest.importorskip("ray")
    from generate.dataset.assemble import assemble
    from thermobench.dataset import COLUMN_NAMES, features, load_dataset

    out = tmp_path / "run"
    cfg = compose("source.ids=[fcc-Cu,fcc-Al]", "executor.kind=ray", "executor.ray.num_cpus=1", f"out_dir={out}")
    retries = os.environ.pop("RAY_task_oom_retries", None)
    try:
        summary = run(cfg, progress=False)
        assert os.environ["RAY_task_oom_retries"] == "2"  # killed by the memory monitor: bounded retries, then a record
    finally:
        ray.shutdown()
        os.environ.pop("RAY_task_oom_retries", None)
        if retries is not None:
            os.environ["RAY_task_oom_retries"] = retries
    assert (summary.n_done, summary.n_failed) == (2, 0)
    stats = assemble(out, tmp_path / "dataset")
    assert stats["n_materials"] == 2 and stats["n_rows"] == 6
    assert "pretty_name: dataset" in (tmp_path / "dataset" / "README.md").read_text()  # titled by its folder
    check_assemble_refuses_broken_records(out, tmp_path)
    loaded = load_dataset(str(tmp_path / "dataset"), name="random")
    seen = {}
    for split, dataset in loaded.items():
        assert dataset.features == features()
        assert list(dataset.column_names) == list(COLUMN_NAMES)
        for material in set(dataset["material_id"]):
            assert seen.setdefault(material, split) == split
    assert set(seen) == {"fcc-Cu", "fcc-Al"}
    rows = [row for dataset in loaded.values() for row in dataset]
    for row in rows:
        assert row["potential"] == "EMT" and row["sscha_n_configurations"] >= 40
        assert row["kappa_ratio"] is None and row["kappa_null_reason"]
        # EMT copper hardens slightly with temperature in the SSCHA: shifts are small and positive.
        assert 0 < row["mean_relative_frequency_shift"] < 0.2
        assert len(row["renormalized_frequencies_THz"]) == 3 * row["n_supercell_atoms"]


def check_assemble_refuses_broken_records(out: Path, tmp_path: Path) -> None:
    import shutil

    from generate.dataset.assemble import InvalidRecordError, assemble

    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    first, second = sorted(mixed.glob("*/records/*.json"))
    record = json.loads(second.read_text())
    for row in record["rows"]:
        row["dataset_version"] = "9.9.9"
    second.write_text(json.dumps(record))
    with pytest.raises(InvalidRecordError, match="several dataset versions"):
        assemble(mixed, tmp_path / "mixed-dataset")
    first.write_text(first.read_text()[:100])  # a record cut short
    with pytest.raises(InvalidRecordError, match=f"{first.name}: truncated or corrupt record"):
        assemble(mixed, tmp_path / "mixed-dataset")


# ----------------------------------------------------------------------------------------------
# Helpers with exact answers


def test_mode_thermodynamics_classical_limit():
    """At kT ≫ hν every mode has C_v → k_B and F → kT ln(hν/kT)."""
    nu = np.array([0.0, 1.0, 2.0, 3.0])
    temperature = 1e5
    free, entropy, heat = mode_thermodynamics(nu, temperature, n_atoms=1, tolerance_THz=0.1)
    kT = 8.617333e-5 * temperature
    h = 4.135667696e-3
    assert heat == pytest.approx(3.0, rel=1e-6)
    assert free == pytest.approx(np.sum(kT * np.log(h * nu[1:] / kT)), rel=1e-4)
    assert entropy == pytest.approx(np.sum(1 - np.log(h * nu[1:] / kT)), rel=1e-4)
    zero_point, s0, c0 = mode_thermodynamics(nu, 0.0, 1, 0.1)
    assert zero_point == pytest.approx(h * 6 / 2) and s0 == c0 == 0


def test_frequency_shifts_definition():
    harmonic = np.array([0.0, 0.0, 0.0, 0.2, 2.0, 4.0])
    renormalized = np.array([0.0, 0.0, 0.0, 0.5, 2.2, 3.8])
    mean, largest, n, reason = frequency_shifts(harmonic, renormalized, 0, 0.5)
    assert n == 2 and reason is None
    assert mean == pytest.approx((0.1 - 0.05) / 2) and largest == pytest.approx(0.1)
    assert frequency_shifts(harmonic, renormalized, 2, 0.5)[3].startswith("2 harmonic imaginary")


def test_choose_supercell_bounds():
    from ase.build import bulk

    fcc = bulk("Cu", "fcc", a=3.6)
    assert np.prod(np.diag(choose_supercell(fcc, 16, 64))) == 27
    assert np.prod(np.diag(choose_supercell(bulk("Cu", "sc", a=4.0), 16, 64))) == 27
    big = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))  # 8 atoms: 2x2x2 would be 64 > 40
    assert np.prod(np.diag(choose_supercell(big, 16, 100))) == 8  # 64 atoms: the smallest beyond the cell
    with pytest.raises(ValueError, match="the cell alone samples only Γ"):  # never a Γ-only "supercell"
        choose_supercell(big, 16, 40)
    with pytest.raises(ValueError, match="the cell alone samples only Γ"):
        choose_supercell(big, 8, 40)  # the cell has min_atoms already, but alone it is still Γ only
    assert (choose_supercell(fcc, 16, 64, [2, 2, 2]) == np.diag([2, 2, 2])).all()


def test_emt_potential_provenance():
    loaded = load_named_potential("EMT")
    assert loaded.name == "EMT" and len(loaded.sha256) == 64 and "Cu" in loaded.element_types


def test_sources_fail_clearly(tmp_path, monkeypatch):
    from generate.run.sources import directory_source, materials_project_source

    with pytest.raises(FileNotFoundError, match="does not exist"):
        directory_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no structure files"):
        directory_source(tmp_path)
    monkeypatch.delenv("MP_API_KEY", raising=False)
    try:
        import mp_api.client  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="materials-project"):
            materials_project_source(["mp-149"])
    else:
        with pytest.raises(RuntimeError, match="MP_API_KEY"):
            materials_project_source(["mp-149"])


def test_kappa_step_fills_the_kappa_columns(tmp_path):
    pytest.importorskip("phono3py")
    out = tmp_path / "run"
    cfg = compose(
        "source.ids=[fcc-Cu]", "executor.kind=serial", f"out_dir={out}",
        "kappa=rta", "kappa.q_mesh=[4,4,4]",
    )
    assert run(cfg, progress=False).n_done == 1
    (record,) = records_of(out).values()
    for row in record["rows"]:
        assert row["kappa_null_reason"] is None
        assert row["kappa_harmonic_W_mK"] > 0 and row["kappa_renormalized_W_mK"] > 0
        assert row["kappa_ratio"] == pytest.approx(row["kappa_renormalized_W_mK"] / row["kappa_harmonic_W_mK"], rel=1e-6)


def test_surrogate_engine_and_its_fall_back_to_the_direct_engine(tmp_path):
    """EMT copper: the surrogate passes generous thresholds and labels the material; a threshold no fit
    can meet sends every temperature to the direct engine, and the row says why."""
    ids = "source.ids=[fcc-Cu]"
    common = ["executor.kind=serial", "temperatures_K=[300.0]", "sscha=surrogate",
              "sscha.surrogate.n_training_structures=20", "sscha.surrogate.n_verification=40",
              "sscha.surrogate.max_verification=80"]
    fast = tmp_path / "fast"
    assert run(compose(ids, *common, f"out_dir={fast}"), progress=False).n_done == 1
    (row,) = records_of(fast)["fcc-Cu"]["rows"]
    assert "(surrogate engine; verified relative force error" in row["sscha_status"]

    strict = tmp_path / "strict"
    assert run(compose(ids, *common, "sscha.max_relative_force_error=1e-9", f"out_dir={strict}"), progress=False).n_done == 1
    (fallback,) = records_of(strict)["fcc-Cu"]["rows"]
    assert "(direct engine after surrogate fall-back: verified relative force error" in fallback["sscha_status"]
    assert fallback["n_potential_evaluations"] > row["n_potential_evaluations"]


def test_rows_are_checked_against_the_schema_when_written():
    from generate.run.pipeline import checked_against_schema

    record = {"material_id": "x", "status": "ok", "rows": [{"material_id": "x", "temperature_K": 300.0}]}
    checked = checked_against_schema(record)
    assert checked["status"] == "failed" and checked["stage"] == "record"
    assert "does not fit the dataset schema" in checked["reason"] and "missing columns" in checked["reason"]
    assert "rows" not in checked


def test_a_material_stopped_after_its_sscha_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    """A failure (or a killed worker) in the κ stage keeps the SSCHA's checkpoints: the retry evaluates
    no SSCHA ensemble again and gives the rows of an uninterrupted run; success deletes them."""
    pytest.importorskip("phono3py")
    import generate.kappa
    from generate.run.records import compute_material
    from generate.run.settings import check_settings, settings_from_config
    from generate.run.sources import materials_from_config
    from generate.sscha import engine

    cfg = compose("source.ids=[fcc-Cu]", "temperatures_K=[100.0,300.0]", "kappa=rta", "kappa.q_mesh=[4,4,4]")
    settings, (material,) = check_settings(settings_from_config(cfg)), materials_from_config(cfg.source)
    calls = []
    direct = engine.run_sscha
    monkeypatch.setattr(engine, "run_sscha", lambda *a, **k: calls.append(a[3].temperature_K) or direct(*a, **k))
    adapter = generate.kappa.pipeline_kappa_columns

    def stopped(*args, **kwargs):
        raise MemoryError("worker stopped in the kappa stage")

    monkeypatch.setattr(generate.kappa, "pipeline_kappa_columns", stopped)
    partial = tmp_path / "partial"
    failed = compute_material(material, settings, checkpoint_dir=partial)
    assert failed["status"] == "failed" and failed["stage"] == "kappa" and calls == [100.0, 300.0]
    assert len(list((partial / "fcc-Cu").glob("sscha-direct-*.pkl"))) == 2
    progress = json.loads((partial / "fcc-Cu" / "progress.json").read_text())
    assert progress["stage"] == "kappa"
    # python -m generate.run.status: a stopped material, then the same one failed (as the runner records it)
    from generate.run.records import RunFolder
    from generate.run.status import folder_status, report

    (tmp_path / "manifest.json").write_text(json.dumps({"runs": [{"n_requested": 1}]}))
    (progress_path := partial / "fcc-Cu" / "progress.json").write_text(json.dumps({**progress, "pid": 2**22 + 1}))
    (entry,) = folder_status(RunFolder(tmp_path))["unfinished"]
    assert entry["stage"] == "kappa" and entry["state"].startswith("stopped") and entry["checkpoints"] == ["sscha-direct"] * 2
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "fcc-Cu.json").write_text(json.dumps(failed))
    status = folder_status(RunFolder(tmp_path))
    assert status["records"] == {"failed": 1} and status["failed_stages"] == {"kappa": 1}
    assert status["unfinished"][0]["state"] == "failed at kappa; retry_failed=true resumes it"
    assert "fcc-Cu: stage kappa" in report(status) and "0 finished, 1 failed (kappa 1) of 1" in report(status)
    progress_path.write_text(json.dumps(progress))

    monkeypatch.setattr(generate.kappa, "pipeline_kappa_columns", adapter)
    resumed = compute_material(material, settings, checkpoint_dir=partial)
    assert resumed["status"] == "ok" and calls == [100.0, 300.0], "the retry ran an SSCHA again"
    assert [stage for stage, _ in resumed["reused_checkpoints"]] == ["sscha-direct", "sscha-direct"]
    assert resumed["wall_time_s"] >= sum(seconds for _, seconds in resumed["reused_checkpoints"])
    assert not (partial / "fcc-Cu").exists()

    fresh = compute_material(material, settings)
    assert calls == [100.0, 300.0, 100.0, 300.0]
    # The stages after the checkpoint evaluate EMT again, and ASE's EMT keeps neighbour pairs within its
    # 0.3 Å skin across calls, so its forces depend on what the calculator evaluated before (measured:
    # ~2 % in this κ, 1e-14 in the classical σᴬ); the matgl potentials build their graph per call.
    after = {"kappa_harmonic_W_mK", "kappa_renormalized_W_mK", "kappa_ratio", "sigma_A_classical", "sigma_A_classical_error"}
    left_out = {"sscha_wall_time_s", "material_wall_time_s", *after}
    for a, b in zip(resumed["rows"], fresh["rows"], strict=True):
        assert a["kappa_ratio"] is not None
        assert a["sigma_A_classical"] == pytest.approx(b["sigma_A_classical"], rel=1e-9)
        assert {k: v for k, v in a.items() if k not in left_out} == {k: v for k, v in b.items() if k not in left_out}


def test_checkpoint_keys_follow_the_inputs_and_a_torn_file_is_recomputed(tmp_path):
    from generate.run.checkpoint import Checkpoints, digest
    from generate.sscha.result import SSCHASettings

    fc = np.zeros((2, 2, 3, 3))
    moved = fc.copy()
    moved[1, 0, 2, 2] = 1e-12
    assert digest((fc, SSCHASettings())) == digest((fc.copy(), SSCHASettings()))
    assert digest(fc) != digest(moved) and digest(fc) != digest(fc.astype(np.float32))
    assert digest(SSCHASettings()) != digest(SSCHASettings(temperature_K=301.0))

    checkpoints, computed = Checkpoints(tmp_path), []
    assert checkpoints.cached("stage", fc, lambda: computed.append(1) or "value") == "value"
    assert checkpoints.cached("stage", fc, lambda: computed.append(2) or "other") == "value" and computed == [1]
    (path,) = tmp_path.glob("stage-*.pkl")
    path.write_bytes(path.read_bytes()[:5])  # a write cut short
    assert checkpoints.cached("stage", fc, lambda: computed.append(3) or "again") == "again" and computed == [1, 3]
    assert Checkpoints(None).cached("stage", fc, lambda: "uncached") == "uncached" and not Checkpoints(None).reused

    # The surrogate engine's checkpoint holds its rejections too
    from generate.sscha.surrogate import SurrogateDiverged

    diverged = SurrogateDiverged("centroid left the fit", n_potential_evaluations=64, wall_time_s=2.5)
    back = checkpoints.cached("diverged", 0, lambda: [diverged])
    back = Checkpoints(tmp_path).cached("diverged", 0, lambda: None)
    assert isinstance(back[0], SurrogateDiverged) and str(back[0]) == "centroid left the fit"
    assert (back[0].n_potential_evaluations, back[0].wall_time_s) == (64, 2.5)


def test_audit_sample_is_fixed_by_the_id_and_about_one_in_every():
    from generate.run.records import in_audit_sample

    ids = [f"phonondb-mp-{k}" for k in range(4000)]
    chosen = [i for i in ids if in_audit_sample(i, 20)]
    assert abs(len(chosen) / len(ids) - 1 / 20) < 4 * np.sqrt(0.05 * 0.95 / len(ids))  # binomial, 4σ
    assert chosen == [i for i in reversed(ids) if in_audit_sample(i, 20)][::-1]  # order-independent
    assert not any(in_audit_sample(i, 0) for i in ids) and all(in_audit_sample(i, 1) for i in ids)


def test_audited_material_carries_the_verified_routes_differences(tmp_path):
    """fcc Cu with the surrogate engine, audited by the direct one: both routes answer the same SCHA, so their
    frequencies differ by no more than the two error targets (0.2 THz each) and σᴬ by little; a material
    outside the sample has null audit columns."""
    common = ["source.ids=[fcc-Cu]", "executor.kind=serial", "temperatures_K=[300.0]", "sscha=surrogate",
              "sscha.surrogate.n_training_structures=20", "sscha.surrogate.n_verification=40",
              "sscha.surrogate.max_verification=80", "sscha.frequency_error_target_THz=0.2",
              "audit.frequency_error_target_THz=0.2", "sscha.max_configurations=400"]
    audited = tmp_path / "audited"
    assert run(compose(*common, "audit.every=1", f"out_dir={audited}"), progress=False).n_done == 1
    (row,) = records_of(audited)["fcc-Cu"]["rows"]
    assert 0 <= row["audit_max_frequency_difference_THz"] < 0.4
    assert row["audit_frequency_difference_error_THz"] > 0
    assert abs(row["audit_sigma_A_difference"]) < 0.05
    assert row["verified_relative_force_error"] is not None
    plain = tmp_path / "plain"
    assert run(compose(*common, "audit.every=0", f"out_dir={plain}"), progress=False).n_done == 1
    (row,) = records_of(plain)["fcc-Cu"]["rows"]
    assert row["audit_max_frequency_difference_THz"] is None and row["audit_sigma_A_difference"] is None


def test_kappa_from_the_surrogates_fc3_needs_no_potential_evaluation_and_keeps_the_ratio(tmp_path):
    """kappa.fc3_method=surrogate takes FC3 from the SSCHA's fitted expansion (EMT copper, 27-atom supercell); the
    audit sample gets κ again with the potential's finite-displacement FC3. Measured: κ_harm 12.6 vs
    13.8 W/mK (the fit's cubic terms are effective ones at thermal amplitudes, not 0.03 Å differences), the
    ratios equal to 1e-4: both κ share the FC3, so its error cancels in the label. Bounds: 25 % on κ, 1 % on the ratio."""
    pytest.importorskip("phono3py")
    out = tmp_path / "surrogate"
    cfg = compose("source.ids=[fcc-Cu]", "executor.kind=serial", "temperatures_K=[300.0]", "sscha=surrogate",
                  "sscha.surrogate.n_training_structures=20", "sscha.surrogate.n_verification=40",
                  "sscha.surrogate.max_verification=80", "kappa=rta", "kappa.q_mesh=[6,6,6]", "kappa.fc3_method=surrogate",
                  "supercell.min_atoms=27", "supercell.max_atoms=32", "audit.every=1", "audit.frequency_error_target_THz=0.2",
                  "sscha.max_configurations=400", f"out_dir={out}")
    assert run(cfg, progress=False).n_done == 1
    (row,) = records_of(out)["fcc-Cu"]["rows"]
    assert row["kappa_fc3_source"] == "surrogate expansion, cubic terms"
    assert row["audit_kappa_other_fc3_source"] == "potential, finite displacements"
    assert row["kappa_harmonic_W_mK"] == pytest.approx(row["audit_kappa_harmonic_other_fc3_W_mK"], rel=0.25)
    fd_ratio = row["audit_kappa_renormalized_other_fc3_W_mK"] / row["audit_kappa_harmonic_other_fc3_W_mK"]
    assert row["kappa_ratio"] == pytest.approx(fd_ratio, rel=0.01)
    # ...and κ again on audit.kappa_q_mesh (11³ by default, the rows' 6³ differing): the same FC2s and FC3 there
    # (equality with a fresh run on that mesh: tests/test_kappa.py)
    assert row["audit_kappa_harmonic_reference_mesh_W_mK"] > 0 and row["audit_kappa_renormalized_reference_mesh_W_mK"] > 0
    assert row["audit_kappa_harmonic_reference_mesh_W_mK"] != pytest.approx(row["kappa_harmonic_W_mK"], rel=1e-6)


def test_a_temperature_held_at_the_floor_gets_no_kappa_and_costs_none(monkeypatch):
    """κ of an SSCHA FC2 with modes held at the stabilization floor would measure the floor (phonondb's SrO2:
    4e17 W/(m·K)): such a temperature gets null κ with the reason, the κ step sees only the free ones, and a
    material held at every κ temperature never reaches it (no FC3)."""
    from types import SimpleNamespace

    import generate.kappa
    from generate.run.records import _kappa_columns
    from generate.run.settings import check_settings, settings_from_config

    settings = check_settings(settings_from_config(compose("source.ids=[fcc-Cu]", "temperatures_K=[100.0,300.0,500.0]",
                                                           "kappa=rta", "+kappa.temperatures_K=[100.0,300.0]")))
    step = SimpleNamespace(n_stabilized_modes=0)

    def result(temperature, frequencies):
        return SimpleNamespace(temperature_K=temperature, supercell_frequencies_THz=np.array(frequencies), history=[step],
                               force_constants_eV_A2=np.zeros((1, 1, 3, 3)))

    seen = []

    def adapter(cell, matrix, model, harmonic, results, cfg, **kwargs):
        seen.append([r.temperature_K for r in results])
        return [{"kappa_harmonic_W_mK": 1.0, "kappa_ratio": 0.9, "kappa_null_reason": None} for _ in results]

    monkeypatch.setattr(generate.kappa, "pipeline_kappa_columns", adapter)
    harmonic = SimpleNamespace(phonon=SimpleNamespace(force_constants=np.zeros((1, 1, 3, 3))))
    mixed = [result(100.0, [0.0, 1.0, 1.0]), result(300.0, [0.0, 1.5, 2.0]), result(500.0, [0.0, 1.0, 1.0])]
    potential = SimpleNamespace(model=None)
    rows = _kappa_columns(settings, None, np.eye(3), potential, harmonic, mixed, floor_THz=1.0)
    assert seen == [[300.0]]
    assert rows[1]["kappa_ratio"] == 0.9
    assert rows[0]["kappa_ratio"] is None and "holds 2 mode(s) at the 1 THz stabilization floor" in rows[0]["kappa_null_reason"]
    assert rows[2]["kappa_null_reason"].startswith("not computed at this temperature")
    seen.clear()
    held = _kappa_columns(settings, None, np.eye(3), potential, harmonic, [mixed[0], mixed[2]], floor_THz=1.0)
    assert seen == [] and "stabilization floor" in held[0]["kappa_null_reason"]


def test_a_temperature_held_at_the_floor_is_not_audited(monkeypatch):
    """The audit's direct engine runs only at the temperatures whose row is free of the stabilization floor: at a
    held one both routes hold the same modes (a bound against a bound) and the direct engine stalls (BaTiO3 in the
    anchoring panel: over an hour); held rows get null audit columns, free rows the difference."""
    from types import SimpleNamespace

    from generate.run.records import audit_columns
    from generate.sscha.engine import DirectEngine
    from generate.sscha.result import SSCHASettings

    settings = SimpleNamespace(audit_every=1, audit_frequency_error_target_THz=0.05)
    per_temperature = [SSCHASettings(temperature_K=t, min_frequency_THz=1.0) for t in (100.0, 300.0, 500.0)]

    def result(temperature, frequencies, sigma):
        return SimpleNamespace(temperature_K=temperature, supercell_frequencies_THz=np.array(frequencies),
                               supercell_frequency_errors_THz=np.full(3, 0.01), sigma_A=sigma,
                               history=[SimpleNamespace(n_stabilized_modes=0)])

    fast = [result(100.0, [0.0, 1.0, 1.0], 0.1), result(300.0, [0.0, 1.5, 2.0], 0.2), result(500.0, [0.0, 1.0, 3.0], 0.3)]
    seen = []

    def direct(self, cell, model, matrix, settings, harmonic=None):
        seen.append([(s.temperature_K, s.frequency_error_target_THz) for s in settings])
        return [result(s.temperature_K, [0.0, 1.6, 2.0], 0.25) for s in settings]

    monkeypatch.setattr(DirectEngine, "run", direct)
    rows = audit_columns("any", settings, None, None, np.eye(3), per_temperature, None, fast)
    assert seen == [[(300.0, 0.05)]]
    assert rows[0]["audit_max_frequency_difference_THz"] is None and rows[2]["audit_sigma_A_difference"] is None
    assert rows[1]["audit_max_frequency_difference_THz"] == pytest.approx(0.1)
    assert rows[1]["audit_sigma_A_difference"] == pytest.approx(-0.05)
    seen.clear()
    assert all(r["audit_sigma_A_difference"] is None for r in audit_columns(
        "any", settings, None, None, np.eye(3), [per_temperature[0]], None, [fast[0]])) and seen == []
