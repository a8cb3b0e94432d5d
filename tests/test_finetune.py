"""Fine-tuning on phonopy datasets: reading every supported layout, bad input, a short real run."""

import lzma
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from generate.potential.finetune import finetune, force_errors, read_phonon_datasets
from thermobench.matgl_compat import Convention, detect_convention
from thermobench.potentials import load_potential

ELEMENTS = ("Na", "Cl", "Mg", "O")


@pytest.fixture()
def tree(shared, tmp_path):
    """NaCl as disp+FORCE_SETS, MgO as phonopy_params.yaml.xz, and three broken datasets."""
    import phonopy

    source = shared / "reference" / "dft-phonons"
    shutil.copytree(source / "NaCl", tmp_path / "rocksalt" / "NaCl")
    mgo = phonopy.load(source / "MgO" / "phonopy_disp.yaml", force_sets_filename=source / "MgO" / "FORCE_SETS")
    mgo.save(tmp_path / "params.yaml", settings={"force_sets": True})
    (tmp_path / "oxides" / "MgO").mkdir(parents=True)
    (tmp_path / "oxides" / "MgO" / "phonopy_params.yaml.xz").write_bytes(lzma.compress((tmp_path / "params.yaml").read_bytes()))

    broken = tmp_path / "broken"
    lines = (source / "NaCl" / "FORCE_SETS").read_text().splitlines()
    (broken / "one-force-set").mkdir(parents=True)
    shutil.copy(source / "NaCl" / "phonopy_disp.yaml", broken / "one-force-set")
    (broken / "one-force-set" / "FORCE_SETS").write_text("\n".join(["64", "1", *lines[2 : 2 + 3 + 64]]) + "\n")
    (broken / "nan-forces").mkdir()
    shutil.copy(source / "NaCl" / "phonopy_disp.yaml", broken / "nan-forces")
    nan_lines = list(lines)
    nan_lines[6] = "nan 0.0 0.0"
    (broken / "nan-forces" / "FORCE_SETS").write_text("\n".join(nan_lines) + "\n")
    (broken / "curium").mkdir()
    (broken / "curium" / "phonopy_params.yaml").write_text(
        (tmp_path / "params.yaml").read_text().replace("symbol: Mg", "symbol: Cm")
    )
    (tmp_path / "params.yaml").unlink()
    return tmp_path


def test_reads_every_layout_and_names_broken_datasets(tree):
    data = read_phonon_datasets(tree, ELEMENTS)
    assert sorted(data.materials) == ["MgO", "NaCl"]
    counts = {m: sum(s.material == m for s in data.samples) for m in data.materials}
    assert counts == {"NaCl": 3, "MgO": 3}  # two displacements each, plus the perfect supercell
    perfect = [s for s in data.samples if not np.any(s.forces_eV_A)]
    assert len(perfect) == 2 and all(len(s.atoms) == 64 for s in perfect)
    assert "1 force sets" in data.skipped["one-force-set"] or "force" in data.skipped["one-force-set"]
    assert "nan-forces" in data.skipped and "curium" in data.skipped
    assert "Cm" in data.skipped["curium"]
    # DFT forces survive the round trip unchanged
    nacl = [s for s in data.samples if s.material == "NaCl" and np.any(s.forces_eV_A)]
    first = np.loadtxt((tree / "rocksalt" / "NaCl" / "FORCE_SETS").read_text().splitlines()[5:69])[:, :3]
    np.testing.assert_allclose(nacl[0].forces_eV_A, first)


def test_short_finetune_writes_a_loadable_model_that_fits_better(tree, tmp_path):
    config = SimpleNamespace(
        base_potential="M3GNet-MP-2021.2.8-PES", data_dir=str(tree / "oxides"), parity_dir=None,
        out_dir=str(tmp_path / "run"), exclude=[], seed=0, epochs=6, lr=1e-4, batch_size=2, force_weight=1.0,
        equilibrium_weight=0.1, energy_weight=100.0, replay_structures=2, frozen_prefixes=["model.embedding"], gradient_clip=1.0,
        accelerator="cpu", progress_bar=False,
    )
    report = finetune(config)
    assert report["materials"] == ["MgO"] and report["n_replay"] == 2
    before, after = report["force_errors_before"]["MgO"], report["force_errors_after"]["MgO"]
    assert after["force_change_mae_eV_A"] < before["force_change_mae_eV_A"]
    model_dir = tmp_path / "run" / "model"
    assert detect_convention(model_dir) is Convention.DESTINATION
    assert "sha256" in (model_dir / "README.md").read_text()
    # Saved and reloaded through the compatibility layer, the model computes what was trained.
    samples = read_phonon_datasets(tree / "oxides", ELEMENTS).samples
    reloaded = force_errors(load_potential(model_dir), samples)["MgO"]
    assert reloaded["force_change_mae_eV_A"] == pytest.approx(after["force_change_mae_eV_A"], rel=1e-4)


def test_finetune_at_scale_streams_phonondb_resumes_and_never_reads_the_test_split(shared, tmp_path, capfd):
    """Four training steps on the committed phonondb fixtures, a checkpoint, then a resumed run."""
    from hydra import compose, initialize_config_dir

    from generate.potential.finetune_phonondb import finetune_at_scale
    from thermobench.phonondb import read_index

    fixtures = Path(__file__).parent / "data" / "phonondb"
    repo = Path(__file__).resolve().parents[1]

    def config(max_steps):
        with initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
            return compose(config_name="finetune", overrides=[
                "source.name=phonondb", f"source.phonondb_dir={fixtures}", "source.materials_per_step=1",
                "source.displacements_per_step=1", "source.validation_materials=1", "replay_structures=2",
                "replay_every=2", f"max_steps={max_steps}", "validate_every=2", "parity_dir=null",
                f"out_dir={tmp_path / 'ft'}", "lr=1e-5", "distill_weight=1.0"])

    report = finetune_at_scale(config(4))
    splits = {e.material_id: e.split for e in read_index()}
    history = report["history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    assert report["data"]["train_materials"] == 3  # Si, Cu2O, NaCl; LiI's 128-atom supercell is above the cap
    assert report["data"]["validation_materials"] == 1 and report["best"]["n_materials"] == 1  # BaTe
    assert all(np.isfinite(h["relative_force_change_mae"]) for h in history)
    # the anharmonic guard: BaTe's cubic and quartic combinations against the base, in every validation; the base
    # itself reproduces its own labels (batched vs one-by-one evaluation: float32 round-off, 1e-4 allowed)
    assert report["hyperparameters"]["distill_weight"] > 0
    assert all(np.isfinite(h["guard_cubic_mae"]) and np.isfinite(h["guard_quartic_mae"]) for h in history)
    assert history[0]["guard_cubic_mae"] < 1e-4 and history[0]["guard_quartic_mae"] < 1e-4
    assert all(splits[m] != "test" for m in report["data"].get("read", []))
    assert (tmp_path / "ft" / "checkpoint.pt").is_file() and (tmp_path / "ft" / "best" / "README.md").is_file()
    assert load_potential(str(tmp_path / "ft" / "best")).model.element_types  # the selected model loads

    capfd.readouterr()
    resumed = finetune_at_scale(config(6))
    assert "resumed at step 4" in capfd.readouterr().err
    assert [h["step"] for h in resumed["history"]] == [0, 2, 4, 6]
