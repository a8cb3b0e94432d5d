"""The leaderboard's trust model: official datasets by registry and checksum, per-dataset rankings,
entries that reproduce the public labels, readable ratios, and files that are not entries.

Entries here are built from the embedded datasets' test rows (no training, no potential), except the
reproduction test, which trains and evaluates the mean baseline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.test_training import hydra_conf, run_config  # noqa: F401 (a fixture)
from thermobench import leaderboard, official_datasets
from thermobench.dataset import EMBEDDED

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "leaderboard" / "mean-thermobench-mini-anharmonicity.yml"


def make_entry(folder: Path, model_name: str, dataset: str = "thermobench-mini", predict=None,
               task: str = "anharmonicity") -> Path:
    """An entry of ``model_name`` on ``dataset``'s test rows: ``predict(labels, split)`` gives the predictions
    (default: a constant 0.3), metrics computed as evaluate.py does; returns the entry's path."""
    official = leaderboard.official_task(task)
    frames = official_datasets.test_frames(dataset)
    tables = []
    for split, frame in frames.items():
        labels = frame[official["target"]].to_numpy(float)
        values = predict(labels, split) if predict else np.full(len(frame), 0.3)
        tables.append(pd.DataFrame({"material_id": frame["material_id"].astype(str), "temperature_K": frame["temperature_K"],
                                    "split": split, "prediction": values, "target": labels,
                                    "dataset_version": frame["dataset_version"].astype(str)}))
    predictions = pd.concat(tables, ignore_index=True)
    key = f"{model_name}-{dataset}-{task}"
    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    predictions_path = folder / "predictions" / f"{key}.parquet"
    predictions.to_parquet(predictions_path, index=False)
    entry = yaml.safe_load(TEMPLATE.read_text())
    entry.update(model_key=key, model_name=model_name, dataset={"name": dataset, "version": predictions["dataset_version"][0]},
                 metrics=leaderboard.score_predictions(predictions, official),
                 predictions={"path": f"predictions/{key}.parquet", "sha256": leaderboard.sha256_of(predictions_path)})
    path = folder / f"{key}.yml"
    path.write_text(yaml.safe_dump(entry, sort_keys=False))
    return path


def edit(path: Path, **changes) -> None:
    entry = yaml.safe_load(path.read_text())
    entry.update(changes)
    path.write_text(yaml.safe_dump(entry, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# the registry of official datasets


@pytest.mark.parametrize("name", sorted(official_datasets.read_registry()))
def test_committed_registry_matches_the_embedded_dataset(name):
    """Fails when an embedded dataset was re-assembled: the message says the one command that updates the registry."""
    registered = official_datasets.read_registry()[name]
    record = official_datasets.dataset_record(EMBEDDED[name])
    assert (record["version"], record["test_labels_sha256"]) == (registered["version"], registered["test_labels_sha256"]), (
        f"{name} changed; run `python -m thermobench.leaderboard register thermobench/data/{name}`, commit "
        "thermobench/data/official_datasets.json and re-score the leaderboard entries on it"
    )


def test_both_embedded_datasets_are_official():
    assert {"thermobench-mini", "thermobench-0.2"} <= set(official_datasets.read_registry())


def test_checksum_follows_labels_not_parquet_bytes(tmp_path):
    frames = official_datasets.test_frames("thermobench-mini")
    reference = official_datasets.label_checksum(frames)
    shuffled = {c: f.sample(frac=1.0, random_state=1).reset_index(drop=True) for c, f in frames.items()}
    assert official_datasets.label_checksum(shuffled) == reference  # row order and storage do not matter
    copy = tmp_path / "copy"
    shutil.copytree(EMBEDDED["thermobench-mini"], copy)
    for config, frame in shuffled.items():
        frame.to_parquet(copy / config / "test.parquet", index=False, compression="gzip")  # other bytes, same values
    assert official_datasets.dataset_record(copy)["test_labels_sha256"] == reference
    forged = {c: f.copy() for c, f in frames.items()}
    forged["ood"].loc[0, "sigma_A"] += 1e-6
    assert official_datasets.label_checksum(forged) != reference


def test_register_refuses_a_folder_the_name_does_not_load(tmp_path):
    copy = tmp_path / "thermobench-mini"
    shutil.copytree(EMBEDDED["thermobench-mini"], copy)
    with pytest.raises(official_datasets.DatasetNotOfficialError, match="only a dataset the package loads by that name"):
        official_datasets.register(copy, path=tmp_path / "registry.json")
    assert not (tmp_path / "registry.json").exists()


def test_register_writes_a_record_that_validation_then_accepts(tmp_path):
    registry = tmp_path / "registry.json"
    record, previous = official_datasets.register(EMBEDDED["thermobench-mini"], path=registry)
    assert previous is None and record["name"] == "thermobench-mini"
    frames, version = official_datasets.official_test_frames("thermobench-mini", path=registry)
    assert version == record["version"] and set(frames) == {"random", "ood"}


# ---------------------------------------------------------------------------------------------
# attacks through dataset.name


def forged_copy(tmp_path: Path) -> Path:
    """thermobench-mini with its test labels replaced by a model's predictions (here: 0.3 everywhere)."""
    copy = tmp_path / "forged"
    shutil.copytree(EMBEDDED["thermobench-mini"], copy)
    for config in ("random", "ood"):
        frame = pd.read_parquet(copy / config / "test.parquet")
        frame["sigma_A"] = 0.3
        frame.to_parquet(copy / config / "test.parquet", index=False)
    return copy


@pytest.mark.parametrize("as_relative", [False, True])
def test_dataset_name_that_is_a_path_is_refused(tmp_path, monkeypatch, as_relative):
    copy = forged_copy(tmp_path)
    entry = make_entry(tmp_path / "lb", "cheat")
    monkeypatch.chdir(tmp_path)
    edit(entry, dataset={"name": "forged" if as_relative else str(copy), "version": "0.1.0"})
    with pytest.raises(leaderboard.LeaderboardError, match="is not an official leaderboard dataset"):
        leaderboard.validate_all(tmp_path / "lb")


def test_forged_labels_under_an_official_name_are_refused(tmp_path, monkeypatch):
    make_entry(tmp_path / "lb", "cheat")
    monkeypatch.setitem(EMBEDDED, "thermobench-mini", forged_copy(tmp_path))  # the package's copy replaced
    with pytest.raises(leaderboard.LeaderboardError, match=r"differ from the registered ones .* run `python -m thermobench.leaderboard register thermobench/data/thermobench-mini`"):
        leaderboard.validate_all(tmp_path / "lb")


# ---------------------------------------------------------------------------------------------
# entries that reproduce the public labels


def test_entry_that_reproduces_the_test_labels_is_refused_until_reproduced(tmp_path):
    path = make_entry(tmp_path, "oracle", predict=lambda labels, split: labels + 1e-7)
    with pytest.raises(leaderboard.LeaderboardError, match=r"reproduces the public test labels \(ood MAE 1e-07 < 0.01"):
        leaderboard.validate_all(path)
    entry = yaml.safe_load(path.read_text())
    (tmp_path / leaderboard.REPRODUCTIONS).write_text(
        f'{{"{entry["model_key"]}": {{"predictions_sha256": "{"0" * 64}"}}}}')  # a record of other predictions
    with pytest.raises(leaderboard.LeaderboardError, match="reproduces the public test labels"):
        leaderboard.validate_all(path)
    (tmp_path / leaderboard.REPRODUCTIONS).write_text(
        f'{{"{entry["model_key"]}": {{"predictions_sha256": "{entry["predictions"]["sha256"]}"}}}}')
    assert leaderboard.validate_all(path) == 1


def test_a_good_but_not_exact_entry_passes(tmp_path):
    rng = np.random.default_rng(0)
    path = make_entry(tmp_path, "good", predict=lambda labels, split: labels + rng.normal(0, 0.02, len(labels)))
    assert leaderboard.validate_all(path) == 1


def test_reproduce_reruns_evaluate_from_the_named_checkpoints(hydra_conf, tmp_path):
    import evaluate
    import train

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    train.train(run_config("train.yaml", ["model=mean", "task=anharmonicity", cache], tmp_path / "run"))
    entry = evaluate.evaluate(run_config("evaluate.yaml", [f"ckpt_path={tmp_path / 'run'}", f"leaderboard_dir={tmp_path / 'lb'}",
                                                           cache, "feature_importance=false"], tmp_path / "e"))
    path = tmp_path / "lb" / f"{entry['model_key']}.yml"
    assert set(entry["checkpoints"]) == {"random", "ood"}
    moved = tmp_path / "downloaded-run"  # a checkpoint supplied with the entry, not where train.py wrote it
    shutil.move(tmp_path / "run", moved)
    record = leaderboard.reproduce(path, moved)
    assert record["predictions_sha256"] == entry["predictions"]["sha256"] and record["max_abs_difference"] == 0.0
    assert entry["model_key"] in leaderboard.read_reproductions(tmp_path / "lb")

    predictions_path = tmp_path / "lb" / entry["predictions"]["path"]  # predictions edited after the fact
    predictions = pd.read_parquet(predictions_path)
    predictions.loc[0, "prediction"] += 0.05
    predictions.to_parquet(predictions_path, index=False)
    edit(path, metrics=leaderboard.score_predictions(predictions, entry["task"]),
         predictions={**entry["predictions"], "sha256": leaderboard.sha256_of(predictions_path)})
    with pytest.raises(leaderboard.LeaderboardError, match="do not reproduce the predictions file: 1 rows differ"):
        leaderboard.reproduce(path, moved)

    edit(path, checkpoints={split: {"sha256": "f" * 64} for split in entry["checkpoints"]})
    with pytest.raises(leaderboard.LeaderboardError, match="holds other model files than the entry names"):
        leaderboard.reproduce(path, moved)


# ---------------------------------------------------------------------------------------------
# rankings per dataset version, readable ratios


def test_entries_on_different_datasets_are_ranked_separately(tmp_path):
    folder = tmp_path / "lb"
    make_entry(folder, "mean", predict=lambda labels, split: np.full(len(labels), 0.2))
    make_entry(folder, "model", predict=lambda labels, split: labels + 0.05)
    make_entry(folder, "model", dataset="thermobench-0.2", predict=lambda labels, split: labels + 0.01)
    assert leaderboard.validate_all(folder) == 3
    markdown, _ = leaderboard.render(folder, tmp_path / "LEADERBOARD.md")
    text = markdown.read_text()
    other, mini = text.split("## thermobench-mini 0.1.0")  # sections sorted by dataset name
    assert "## thermobench-0.2 0.2.0" in other and "model-thermobench-0.2-anharmonicity" not in mini
    assert "model-thermobench-0.2-anharmonicity" in other and "| × mean |" not in other  # 0.2 has no mean baseline entry
    assert "| × mean |" in mini


@pytest.mark.parametrize(("mean", "mae", "shown"), [(0.1, 0.0, "∞ (exact)"), (0.1, 0.05, "2.00"), (0.1, 1e-12, "1e+11")])
def test_mean_ratio_is_finite_and_short(mean, mae, shown):
    assert leaderboard.mean_ratio(mean, mae) == shown


# ---------------------------------------------------------------------------------------------
# files that are not entries


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text .UTF-8. YAML file"),
    (b"- a\n- list\n", "a leaderboard entry is a YAML mapping of fields, not list"),
    (b"just a string\n", "a leaderboard entry is a YAML mapping of fields, not str"),
    (b"key: [unclosed\n", "not valid YAML"),
])
def test_a_file_that_is_not_an_entry_is_named(tmp_path, content, message):
    (tmp_path / "bad.yml").write_bytes(content)
    with pytest.raises(leaderboard.LeaderboardError, match=f"bad.yml: {message}"):
        leaderboard.validate_all(tmp_path)
