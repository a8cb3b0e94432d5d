"""Training, evaluation and the leaderboard: metrics, graphs, descriptors, configs, rejection, end to end.

The end-to-end tests train every model config for one step (``fast_dev_run``) on the embedded
dataset and turn the run into a validated leaderboard entry; they need ``thermobench-mini``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import open_dict

from thermobench import leaderboard, metrics
from thermobench.dataset import EMBEDDED
from thermobench.features import AMU_A2_PER_PS2_EV, harmonic_features, structure_features
from thermobench.graphs import atoms_from_row, structure_graph
from thermobench.structures import builtin_structure
from thermobench.tasks import Task

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MODELS = ["mean", "harmonic", "descriptor", "cgcnn", "schnet", "m3gnet"]
TINY = {  # one-step runs with small networks so the whole file stays within a couple of minutes
    "descriptor": ["model.max_iter=20"],
    "cgcnn": ["model.net.hidden=8", "model.net.n_layers=1"],
    "schnet": ["model.net.hidden=8", "model.net.n_filters=8", "model.net.n_interactions=1"],
    "m3gnet": ["model.net.init_from_potential=null", "model.net.hidden=8",
               "+model.net.encoder_kwargs={nblocks:1,units:8,dim_node_embedding:8,dim_edge_embedding:8}"],
}


def row_of(atoms, material_id="rocksalt-NaCl", **extra) -> dict:
    return {"material_id": material_id, "lattice_vectors": atoms.cell.array.tolist(),
            "cartesian_site_positions": atoms.positions.tolist(), "species_at_sites": atoms.get_chemical_symbols(), **extra}


# ---------------------------------------------------------------------------------------------
# pure functions


def test_metrics_match_hand_computed_values():
    y, p = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 1.0, 1.0, 3.5])
    assert metrics.mae(y, p) == pytest.approx(0.5)
    assert metrics.rmse(y, p) == pytest.approx(math.sqrt((0.25 + 0 + 1 + 0.25) / 4))
    assert metrics.r2(y, p) == pytest.approx(1 - 1.5 / 5.0)
    assert metrics.spearman(y, p) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert metrics.spearman(y, np.full(4, 1.0)) == 0.0  # constant baseline: no ranking power
    truth, prob = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])
    assert metrics.roc_auc(truth, prob) == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
    assert metrics.accuracy(truth, prob) == pytest.approx(0.5)
    assert metrics.balanced_accuracy([0, 0, 0, 1], [0.1, 0.1, 0.1, 0.1]) == pytest.approx(0.5)
    assert metrics.f1(truth, prob) == pytest.approx(0.5)
    for name in metrics.REGRESSION_METRICS + metrics.CLASSIFICATION_METRICS:
        assert metrics.DIRECTIONS[name] in ("lower", "higher")


def test_classification_task_thresholds_sigma_A_and_needs_a_threshold():
    task = Task(name="strongly_anharmonic", target="sigma_A", kind="classification", threshold=0.2)
    frame = pd.DataFrame({"sigma_A": [0.1, 0.2, 0.35]})
    assert task.labels(frame).tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="needs a threshold"):
        Task(name="bad", target="sigma_A", kind="classification")
    with pytest.raises(KeyError, match="kappa_ratio"):
        Task(name="kappa_ratio", target="kappa_ratio").has_label(frame)


def test_graph_of_rocksalt_has_six_nearest_neighbours_and_matgl_bond_convention():
    atoms = builtin_structure("NaCl")
    half_a = 2.82  # the built-in cell has a = 5.64 A
    graph = structure_graph(atoms_from_row(row_of(atoms)), cutoff_A=half_a + 0.1)
    assert graph.edge_index.shape[1] == 12  # 6 per site
    assert torch.allclose(graph.edge_distance, torch.full((12,), half_a), atol=1e-5)
    src, dst = graph.edge_index
    bond = graph.pos[dst] + graph.pbc_offshift - graph.pos[src]
    assert torch.allclose(bond.norm(dim=1), graph.edge_distance, atol=1e-5)
    assert structure_graph(atoms, cutoff_A=1.0).edge_index.shape == (2, 0)  # isolated sites are allowed
    with pytest.raises(ValueError, match="unknown element"):
        atoms_from_row(row_of(atoms) | {"species_at_sites": ["Na", "Xx"]})


def test_descriptors_of_rocksalt_and_the_thermal_displacement_formula():
    atoms = builtin_structure("NaCl")
    features = structure_features(row_of(atoms))
    assert features["coordination_mean"] == 6 and features["coordination_std"] == 0
    assert features["nn_distance_A_min"] == pytest.approx(2.82, abs=1e-6)
    assert features["first_shell_spread_mean"] == pytest.approx(0.0, abs=1e-9)
    assert features["delta_chi_bond_mean"] == pytest.approx(3.16 - 0.93, abs=1e-6)  # Pauling Cl - Na
    # three acoustic zeros and one optical frequency: <u^2>/kT = 1/(m w^2) for the optical mode
    row = {"harmonic_frequencies_THz": [0.0, 0.0, 0.0, 5.0, 5.0, 5.0]}
    mass = 29.2
    expected = 1.0 / (mass * (2 * np.pi * 5.0) ** 2 * AMU_A2_PER_PS2_EV)
    assert harmonic_features(row, mass, 2.82)["u2_per_kT_A2_eV"] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# configs


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("group, bad", [("model", "no_such_model"), ("task", "no_such_task")])
def test_unknown_model_or_task_lists_the_valid_ones(hydra_conf, group, bad):
    with pytest.raises(MissingConfigException) as error:
        compose("train.yaml", overrides=[f"{group}={bad}"])
    message = str(error.value)
    valid = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert f"{group}/{bad}" in message and all(name in message for name in valid)


# ---------------------------------------------------------------------------------------------
# leaderboard rejection


def _expected() -> pd.DataFrame:
    return pd.DataFrame({"material_id": ["rocksalt-NaCl", "rocksalt-NaCl", "zincblende-GaAs"],
                         "temperature_K": [100.0, 300.0, 300.0]})


def _predictions(**changes) -> pd.DataFrame:
    frame = _expected().assign(prediction=[0.1, 0.2, 0.3], dataset_version="v1")
    for column, values in changes.items():
        frame[column] = values
    return frame


def test_complete_predictions_are_accepted():
    leaderboard.validate_predictions(_predictions(), _expected(), "v1")


@pytest.mark.parametrize("predictions, reason", [
    (_predictions().iloc[:2], "missing ids"),
    (pd.concat([_predictions(), _predictions().iloc[:1]]), "duplicate"),
    (_predictions(prediction=[0.1, float("nan"), 0.3]), "NaN"),
    (_predictions(dataset_version="v0"), "dataset-version mismatch"),
    (_predictions(material_id=["rocksalt-NaCl", "rocksalt-NaCl", "rocksalt-KCl"]), "missing ids"),
    (_predictions().drop(columns="prediction"), "missing column"),
])
def test_bad_predictions_are_rejected_with_the_reason(predictions, reason):
    with pytest.raises(leaderboard.LeaderboardError, match=reason):
        leaderboard.validate_predictions(predictions, _expected(), "v1")


# ---------------------------------------------------------------------------------------------
# end to end on the embedded dataset

# THERMOBENCH_TEST_DATASET points these tests at another dataset folder (default: the embedded one)
DATASET = os.environ.get("THERMOBENCH_TEST_DATASET", "thermobench-mini")
needs_data = pytest.mark.skipif(DATASET == "thermobench-mini" and not (EMBEDDED[DATASET] / "README.md").is_file(),
                                reason="the embedded thermobench-mini dataset is not generated yet")


def run_config(config: str, overrides: list[str], output_dir: Path):
    cfg = compose(config, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@needs_data
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_one_step_and_becomes_a_valid_leaderboard_entry(hydra_conf, tmp_path, model, shared):
    import evaluate
    import train

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    cfg = run_config("train.yaml", [f"model={model}", f"data.dataset={DATASET}", "task=anharmonicity", "+trainer.fast_dev_run=true",
                                    "logger=csv", "callbacks=none", cache, *TINY.get(model, [])], tmp_path / "run")
    summary = train.train(cfg)
    assert set(summary["splits"]) == {"random", "ood"}
    for split in summary["splits"].values():
        assert Path(split["artifact"]).is_file()
    eval_cfg = run_config("evaluate.yaml", [f"ckpt_path={tmp_path / 'run'}", f"leaderboard_dir={tmp_path / 'lb'}", cache],
                          tmp_path / "eval")
    entry = evaluate.evaluate(eval_cfg)
    saved = yaml.safe_load((tmp_path / "lb" / f"{entry['model_key']}.yml").read_text())
    assert saved == entry and entry["model_key"] == evaluate.model_key_for(model, DATASET, "anharmonicity")
    leaderboard.validate_all(tmp_path / "lb")  # schema, ids against the dataset, metrics rescored
    assert {"random", "ood"} == set(entry["metrics"])


@needs_data
def test_baselines_predict_what_they_promise(hydra_conf, tmp_path):
    from thermobench.datamodule import ThermoDataModule
    from thermobench.models.tabular import HarmonicBaseline, MeanBaseline

    task = Task(name="freq_shift", target="mean_relative_frequency_shift")
    data = ThermoDataModule(dataset=DATASET, task=task)
    data.setup()
    train_y = data.labels["train"]
    assert np.allclose(MeanBaseline().bind(task).fit(data.frames["train"], train_y).predict(data.frames["test"]), train_y.mean())
    assert np.all(HarmonicBaseline().bind(task).fit(data.frames["train"], train_y).predict(data.frames["test"]) == 0.0)
    train_ids, test_ids = set(data.frames["train"]["material_id"]), set(data.frames["test"]["material_id"])
    assert not train_ids & test_ids  # material-grouped splits: no crystal in two splits


@needs_data
def test_seeded_runs_repeat_exactly(hydra_conf, tmp_path):
    import train

    runs = []
    for name in ("a", "b"):
        cfg = run_config("train.yaml", ["model=cgcnn", f"data.dataset={DATASET}", "data.splits=[random]", "trainer.max_epochs=2", "callbacks=none",
                                        "logger=none", f"paths.cache_dir={tmp_path / 'cache'}", *TINY["cgcnn"]],
                         tmp_path / name)
        runs.append(train.train(cfg)["splits"]["random"]["validation"]["mae"]["value"])
    assert runs[0] == runs[1]


@needs_data
def test_entry_with_wrong_dataset_version_or_tampered_metrics_is_rejected(hydra_conf, tmp_path, shared):
    import evaluate
    import train

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    train.train(run_config("train.yaml", ["model=mean", f"data.dataset={DATASET}", cache], tmp_path / "run"))
    entry = evaluate.evaluate(run_config("evaluate.yaml", [f"ckpt_path={tmp_path / 'run'}",
                                                           f"leaderboard_dir={tmp_path / 'lb'}", cache], tmp_path / "e"))
    path = tmp_path / "lb" / f"{entry['model_key']}.yml"
    leaderboard.validate_all(tmp_path / "lb")
    markdown, figure = leaderboard.render(tmp_path / "lb", tmp_path / "LEADERBOARD.md")
    assert f"[mean](leaderboard/{entry['model_key']}.yml)" in markdown.read_text() and figure.stat().st_size > 0
    path.write_text(yaml.safe_dump(entry | {"dataset": {"name": DATASET, "version": "0.0-old"}}))
    with pytest.raises(leaderboard.LeaderboardError, match="dataset-version mismatch"):
        leaderboard.validate_all(tmp_path / "lb")
    tampered = yaml.safe_load(yaml.safe_dump(entry))
    tampered["metrics"]["random"]["mae"]["value"] /= 2
    path.write_text(yaml.safe_dump(tampered))
    with pytest.raises(leaderboard.LeaderboardError, match="not reproduced"):
        leaderboard.validate_all(tmp_path / "lb")
    missing = {k: v for k, v in entry.items() if k != "hardware"}
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(leaderboard.LeaderboardError, match="hardware"):
        leaderboard.validate_all(tmp_path / "lb")


def fake_perfect_score(entry: dict, folder: Path) -> dict:
    """What a cheater does: targets := predictions, metrics and checksum recomputed to match."""
    predictions_path = folder / entry["predictions"]["path"]
    predictions = pd.read_parquet(predictions_path)
    predictions["target"] = predictions["prediction"]
    predictions.to_parquet(predictions_path, index=False)
    faked = yaml.safe_load(yaml.safe_dump(entry))
    faked["metrics"] = leaderboard.score_predictions(predictions, faked["task"])
    faked["predictions"]["sha256"] = leaderboard.sha256_of(predictions_path)
    return faked


@needs_data
def test_leaderboard_takes_targets_from_the_dataset_and_refuses_fakes(hydra_conf, tmp_path, shared):
    import evaluate
    import train

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    train.train(run_config("train.yaml", ["model=mean", f"data.dataset={DATASET}", cache], tmp_path / "run"))
    eval_overrides = [f"ckpt_path={tmp_path / 'run'}", f"leaderboard_dir={tmp_path / 'lb'}", cache]
    entry = evaluate.evaluate(run_config("evaluate.yaml", eval_overrides, tmp_path / "e"))
    path = tmp_path / "lb" / f"{entry['model_key']}.yml"
    assert leaderboard.validate_all(path) == 1  # a single entry file, predictions relative to its folder

    # A second evaluation never replaces the entry silently.
    with pytest.raises(FileExistsError, match="overwrite=true"):
        evaluate.evaluate(run_config("evaluate.yaml", eval_overrides, tmp_path / "e2"))
    evaluate.evaluate(run_config("evaluate.yaml", [*eval_overrides, "overwrite=true"], tmp_path / "e3"))

    faked = fake_perfect_score(entry, tmp_path / "lb")
    assert faked["metrics"]["random"]["mae"]["value"] == 0.0
    path.write_text(yaml.safe_dump(faked))
    with pytest.raises(leaderboard.LeaderboardError, match="target column differs from the dataset"):
        leaderboard.validate_all(tmp_path / "lb")

    relabelled = yaml.safe_load(yaml.safe_dump(entry))
    relabelled["task"]["name"] = "freq_shift"  # an anharmonicity entry passed off as another task
    path.write_text(yaml.safe_dump(relabelled))
    with pytest.raises(leaderboard.LeaderboardError, match="task 'freq_shift' has target 'mean_relative_frequency_shift'"):
        leaderboard.validate_all(tmp_path / "lb")

    (tmp_path / "empty").mkdir()
    with pytest.raises(leaderboard.LeaderboardError, match="no leaderboard entries"):
        leaderboard.validate_all(tmp_path / "empty")
    with pytest.raises(leaderboard.LeaderboardError, match="no such entry file or folder"):
        leaderboard.validate_all(tmp_path / "missing")


def test_matgl_net_starts_from_the_potential_weights(shared):
    from thermobench.models.nets import MatglNet
    from thermobench.potentials import load_potential

    net = MatglNet(init_from_potential="M3GNet-MP-2021.2.8-PES", hidden=8)
    reference = load_potential("M3GNet-MP-2021.2.8-PES").model.state_dict()
    mine = net.encoder.state_dict()
    assert set(reference) == set(mine)
    assert all(torch.equal(reference[k], mine[k]) for k in reference)
    graph = structure_graph(builtin_structure("NaCl"), 5.0)
    graph.temperature_K = torch.tensor([300.0])
    from torch_geometric.data import Batch

    assert net(Batch.from_data_list([graph, graph])).shape == (2,)


@pytest.mark.skipif(not list((REPO / "leaderboard").glob("*.yml")), reason="no committed leaderboard entries")
def test_committed_leaderboard_is_valid_against_the_embedded_dataset():
    """Fails when the embedded dataset changed under the entries (new rows, new version): re-run them."""
    assert leaderboard.validate_all(REPO / "leaderboard") > 0


@needs_data
def test_training_reports_progress_and_names_bad_overrides(hydra_conf, tmp_path, caplog):
    import logging

    import train

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    with pytest.raises(ValueError, match="trainer.max_epochs must be an integer >= -1, not 'abc'"):
        train.train(run_config("train.yaml", ["model=cgcnn", "trainer.max_epochs=abc", cache], tmp_path / "bad"))
    with caplog.at_level(logging.INFO, logger="thermobench.train"):
        train.train(run_config("train.yaml", ["model=cgcnn", f"data.dataset={DATASET}", "data.splits=[random]",
                                              "trainer.max_epochs=2", "logger=none", cache, *TINY["cgcnn"]], tmp_path / "run"))
        train.train(run_config("train.yaml", ["model=mean", f"data.dataset={DATASET}", "data.splits=[random]",
                                              "logger=csv", cache], tmp_path / "mean"))
    messages = [r.getMessage() for r in caplog.records if r.name == "thermobench.train"]
    assert any(m.startswith("epoch 2/2: ") and "val/loss" in m for m in messages)
    assert any("validation mae" in m for m in messages)
    assert any("model=mean" in m and "logger csv records nothing" in m for m in messages)
