"""The leaderboard as data: one YAML per submission, validated, ranked by declared metric directions.

``python -m thermobench.leaderboard validate`` checks every entry (schema, predictions, that the
dataset is an official one whose test labels match the registered checksum, that the stored metrics
are reproduced from the predictions file against those labels);
``python -m thermobench.leaderboard validate --dir ENTRY.yml --reproduce RUN_DIR`` re-predicts an
entry with ``evaluate.py`` from the checkpoints it names and records the reproduction;
``python -m thermobench.leaderboard render`` writes ``LEADERBOARD.md`` and ``leaderboard/leaderboard.png``,
one table per dataset version, task and split;
``python -m thermobench.leaderboard register FOLDER`` updates an official dataset's registry record.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from thermobench import metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY_COLUMNS = ("material_id", "temperature_K")
PREDICTION_COLUMNS = (*KEY_COLUMNS, "split", "prediction", "target", "dataset_version")
MATCH_TOLERANCE = 1e-9
# Test labels are public. A regression entry whose MAE on a split is below this fraction of the labels'
# mean absolute deviation (the MAE of predicting their own mean) reproduces the labels rather than
# predicting them; it is accepted only once `validate --reproduce` has re-predicted it from its checkpoints.
EXACT_FRACTION = 0.01
# Re-predicting on another machine (CPU vs GPU, float32 networks) may move predictions this much.
REPRODUCE_RTOL, REPRODUCE_ATOL = 1e-5, 1e-6
REPRODUCTIONS = "reproductions.json"  # beside the entries; written only by `validate --reproduce`

_METRIC = {
    "type": "object",
    "required": ["value", "unit"],
    "properties": {"value": {"type": "number"}, "unit": {"type": "string"}},
    "additionalProperties": False,
}
_SPLIT_METRICS = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 1}, **{name: _METRIC for name in metrics.DIRECTIONS}},
    "additionalProperties": False,
}
ENTRY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["model_key", "model_name", "task", "dataset", "metrics", "predictions", "hardware", "run_time",
                 "requirements", "hyperparameters", "training", "date_added", "status"],
    "properties": {
        "model_key": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
        "model_name": {"type": "string", "minLength": 1},
        "model_class": {"type": "string"},
        "authors": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        "task": {
            "type": "object",
            "required": ["name", "target", "kind", "unit"],
            "properties": {"name": {"type": "string"}, "target": {"type": "string"},
                           "kind": {"enum": ["regression", "classification"]}, "unit": {"type": "string"},
                           "threshold": {"type": ["number", "null"]}},
        },
        "dataset": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string", "minLength": 1}},
        },
        "metrics": {
            "type": "object",
            "minProperties": 1,  # random and/or ood, each scored by the model trained on that split
            "properties": {"random": _SPLIT_METRICS, "ood": _SPLIT_METRICS},
            "additionalProperties": False,
        },
        "predictions": {
            "type": "object",
            "required": ["path", "sha256"],
            "properties": {"path": {"type": "string"}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        },
        "hardware": {"type": "object", "required": ["cpu", "n_threads", "accelerator"]},
        "run_time": {"type": "object", "required": ["train_s", "definition"],
                     "properties": {"train_s": {"type": "object"}, "definition": {"type": "string"}}},
        "requirements": {"type": "object"},
        "hyperparameters": {"type": "object"},
        "training": {"type": "object", "required": ["seed"]},
        "date_added": {"type": "string"},
        "status": {"enum": ["active", "superseded"]},
        "superseded_by": {"type": "string"},
        "checkpoints": {  # per split: the model file evaluate.py scored (sha256), for `validate --reproduce`
            "type": "object",
            "additionalProperties": {"type": "object", "required": ["sha256"],
                                     "properties": {"file": {"type": "string"},
                                                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
        },
    },
}


class LeaderboardError(ValueError):
    """A submission that cannot enter the leaderboard; the message says why."""


def _keys(frame: pd.DataFrame) -> list[tuple[str, float]]:
    return list(zip(frame["material_id"].astype(str), frame["temperature_K"].astype(float)))


def validate_predictions(predictions: pd.DataFrame, expected: pd.DataFrame, dataset_version: str, label: str = "predictions") -> None:
    """Reject predictions with missing or unknown ids, duplicates, non-finite values or another dataset version.

    ``expected`` holds the test rows (``material_id``, ``temperature_K``) that must each get exactly one
    prediction.
    """
    missing_columns = [c for c in (*KEY_COLUMNS, "prediction", "dataset_version") if c not in predictions.columns]
    if missing_columns:
        raise LeaderboardError(f"{label}: missing column(s) {', '.join(missing_columns)}")
    versions = sorted(set(predictions["dataset_version"].astype(str)))
    if versions != [str(dataset_version)]:
        raise LeaderboardError(
            f"{label}: dataset-version mismatch: predictions were made on {versions}, the dataset is {dataset_version!r}"
        )
    keys = _keys(predictions)
    seen, duplicates = set(), []
    for key in keys:
        if key in seen:
            duplicates.append(key)
        seen.add(key)
    if duplicates:
        raise LeaderboardError(f"{label}: {len(duplicates)} duplicate (material_id, temperature_K) rows, e.g. {duplicates[:3]}")
    values = pd.to_numeric(predictions["prediction"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        examples = [keys[i] for i in np.flatnonzero(bad)[:3]]
        raise LeaderboardError(f"{label}: {int(bad.sum())} NaN or infinite predictions, e.g. {examples}")
    wanted = set(_keys(expected))
    missing = sorted(wanted - seen)
    if missing:
        raise LeaderboardError(f"{label}: {len(missing)} test rows have no prediction (missing ids), e.g. {missing[:3]}")
    extra = sorted(seen - wanted)
    if extra:
        raise LeaderboardError(f"{label}: {len(extra)} predictions for rows not in the test split, e.g. {extra[:3]}")


def score_predictions(predictions: pd.DataFrame, task: dict) -> dict[str, dict]:
    """Metrics per split configuration from a predictions table (``split``, ``prediction``, ``target``)."""
    return {
        split: metrics.score(group["target"].to_numpy(float), group["prediction"].to_numpy(float), task["kind"], task["unit"])
        for split, group in predictions.groupby("split", sort=True)
    }


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def official_task(name: str) -> dict:
    """The task definition ``conf/task/<name>.yaml`` (name, target column, kind, unit, threshold)."""
    path = REPO_ROOT / "conf" / "task" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (REPO_ROOT / "conf" / "task").glob("*.yaml"))
        raise LeaderboardError(f"unknown task {name!r}; the benchmark's tasks are {known}")
    return yaml.safe_load(path.read_text())


def check_task(task: dict, label: str) -> None:
    """An entry's task must be the benchmark's task of that name: same target column, kind, unit, threshold."""
    official = official_task(task["name"])
    for key in ("target", "kind", "unit", "threshold"):
        if task.get(key) != official.get(key):
            raise LeaderboardError(
                f"{label}: task {task['name']!r} has {key} {official.get(key)!r}, the entry says {task.get(key)!r}"
            )


def with_dataset_targets(predictions: pd.DataFrame, expected: pd.DataFrame, label: str) -> pd.DataFrame:
    """``predictions`` with ``target`` taken from the dataset by (material_id, temperature_K).

    A submission's own ``target`` column is never trusted: where it disagrees with the dataset the
    entry is refused, since its metrics were computed against something else.
    """
    truth = expected[[*KEY_COLUMNS, "target"]].rename(columns={"target": "_truth"})
    keyed = predictions.assign(material_id=predictions["material_id"].astype(str), temperature_K=predictions["temperature_K"].astype(float))
    merged = keyed.merge(truth.assign(material_id=truth["material_id"].astype(str), temperature_K=truth["temperature_K"].astype(float)),
                         on=list(KEY_COLUMNS), how="left", validate="one_to_one")
    if "target" in merged.columns:
        submitted = pd.to_numeric(merged["target"], errors="coerce").to_numpy(float)
        truth_values = merged["_truth"].to_numpy(float)
        wrong = ~np.isclose(submitted, truth_values, rtol=MATCH_TOLERANCE, atol=MATCH_TOLERANCE)
        if wrong.any():
            examples = [tuple(merged.loc[i, list(KEY_COLUMNS)]) for i in np.flatnonzero(wrong)[:3]]
            raise LeaderboardError(
                f"{label}: the predictions file's target column differs from the dataset's labels for {int(wrong.sum())} "
                f"rows, e.g. {examples}; targets are taken from the dataset"
            )
    return merged.drop(columns=[c for c in ("target",) if c in merged.columns]).rename(columns={"_truth": "target"})


def check_schema(entry, label: str) -> None:
    import jsonschema

    if not isinstance(entry, dict):
        raise LeaderboardError(f"{label}: an entry is a YAML mapping of fields, not {type(entry).__name__}")
    try:
        jsonschema.validate(entry, ENTRY_SCHEMA)
    except jsonschema.ValidationError as error:
        where = "/".join(map(str, error.absolute_path)) or "top level"
        raise LeaderboardError(f"{label}: schema violation at {where}: {error.message}") from None


def check_entry(entry: dict, root: Path = REPO_ROOT, expected: dict[str, pd.DataFrame] | None = None,
                dataset_version: str | None = None, label: str = "entry", reproduced: dict | None = None) -> dict[str, dict]:
    """Validate one entry: schema, its task, predictions file and its metrics; return the rescored metrics.

    Args:
        root: the folder the predictions path is relative to (the entry's own folder).
        expected: per split configuration, the test rows the predictions must cover and their true
            targets (``target`` column). Given, the metrics are recomputed against these targets and an
            entry that reproduces them (:data:`EXACT_FRACTION`) must be in ``reproduced``.
        dataset_version: the version of the dataset the leaderboard is scored on (optional).
        reproduced: the folder's reproduction records (:data:`REPRODUCTIONS`), by model_key; None: the
            exact-entry rule is not applied (``validate --reproduce`` checks an entry before recording it).
    """
    check_schema(entry, label)
    check_task(entry["task"], label)
    kind = entry["task"]["kind"]
    allowed = set(metrics.CLASSIFICATION_METRICS if kind == "classification" else metrics.REGRESSION_METRICS) | {"n"}
    for split, values in entry["metrics"].items():
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise LeaderboardError(f"{label}: metrics {unknown} in {split!r} do not apply to a {kind} task")
        for name, metric in values.items():
            if name != "n" and not math.isfinite(metric["value"]):
                raise LeaderboardError(f"{label}: metric {split}/{name} is not finite")
    if dataset_version is not None and entry["dataset"]["version"] != dataset_version:
        raise LeaderboardError(
            f"{label}: dataset-version mismatch: entry scored on {entry['dataset']['version']!r}, "
            f"the dataset is {dataset_version!r}"
        )
    path = root / entry["predictions"]["path"]
    if not path.is_file():
        raise LeaderboardError(f"{label}: predictions file {path} does not exist")
    if sha256_of(path) != entry["predictions"]["sha256"]:
        raise LeaderboardError(f"{label}: predictions file {path} does not match its sha256 in the entry")
    predictions = pd.read_parquet(path)
    checked = []
    for split, group in predictions.groupby("split"):
        if expected is not None and split in expected:
            validate_predictions(group, expected[split], entry["dataset"]["version"], f"{label} ({split})")
            group = with_dataset_targets(group, expected[split], f"{label} ({split})")
        elif expected is not None:
            raise LeaderboardError(f"{label}: predictions for split {split!r}, which the dataset does not have")
        elif not np.isfinite(group["prediction"].to_numpy(float)).all():
            raise LeaderboardError(f"{label} ({split}): NaN or infinite predictions")
        checked.append(group)
    predictions = pd.concat(checked, ignore_index=True)
    rescored = score_predictions(predictions, entry["task"])
    if sorted(rescored) != sorted(entry["metrics"]):
        raise LeaderboardError(f"{label}: metrics for {sorted(entry['metrics'])} but predictions for {sorted(rescored)}")
    for split, values in entry["metrics"].items():
        for name, metric in values.items():
            if name == "n":
                if metric != rescored[split]["n"]:
                    raise LeaderboardError(f"{label}: {split}/n = {metric} but the predictions hold {rescored[split]['n']} rows")
            elif abs(metric["value"] - rescored[split][name]["value"]) > MATCH_TOLERANCE * max(1.0, abs(metric["value"])):
                raise LeaderboardError(
                    f"{label}: {split}/{name} = {metric['value']} is not reproduced by the predictions "
                    f"({rescored[split][name]['value']})"
                )
    if expected is not None and reproduced is not None and kind == "regression":
        check_not_exact(entry, predictions, reproduced, label)
    return rescored


def exact_splits(predictions: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Splits whose MAE is below :data:`EXACT_FRACTION` of the labels' mean absolute deviation: (MAE, deviation)."""
    out = {}
    for split, group in predictions.groupby("split", sort=True):
        target, prediction = group["target"].to_numpy(float), group["prediction"].to_numpy(float)
        deviation = float(np.mean(np.abs(target - target.mean())))
        error = float(np.mean(np.abs(prediction - target)))
        if error <= EXACT_FRACTION * deviation:
            out[split] = (error, deviation)
    return out


def check_not_exact(entry: dict, predictions: pd.DataFrame, reproduced: dict, label: str) -> None:
    """Refuse an entry that reproduces the public test labels unless its predictions were reproduced from its checkpoints."""
    exact = exact_splits(predictions)
    if not exact:
        return
    record = reproduced.get(entry["model_key"], {})
    if record.get("predictions_sha256") == entry["predictions"]["sha256"]:
        return
    shown = ", ".join(f"{split} MAE {mae:.3g} < {EXACT_FRACTION:g} × the labels' deviation {dev:.3g}" for split, (mae, dev) in exact.items())
    raise LeaderboardError(
        f"{label}: reproduces the public test labels ({shown}); such an entry is accepted only after "
        f"`python -m thermobench.leaderboard validate --dir <entry.yml> --reproduce <run dir>` has re-predicted it "
        f"with evaluate.py from the checkpoints it names (recorded in {REPRODUCTIONS})"
    )


def load_entries(path: Path) -> list[tuple[Path, dict]]:
    """Entries of a ``.yml`` file or of every ``*.yml`` in a folder; a missing or empty folder is an error."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.yml"))
        if not files:
            raise LeaderboardError(f"{path}: no leaderboard entries (*.yml) in this folder")
    else:
        raise LeaderboardError(f"{path}: no such entry file or folder")
    entries = []
    for file in files:
        try:
            entry = yaml.safe_load(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise LeaderboardError(f"{file.name}: not a text (UTF-8) YAML file ({error.reason} at byte {error.start})") from None
        except yaml.YAMLError as error:
            raise LeaderboardError(f"{file.name}: not valid YAML ({error})") from None
        if not isinstance(entry, dict):
            raise LeaderboardError(f"{file.name}: a leaderboard entry is a YAML mapping of fields, not {type(entry).__name__}")
        entries.append((file, entry))
    return entries


def read_reproductions(folder: Path) -> dict:
    path = Path(folder) / REPRODUCTIONS
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LeaderboardError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(records, dict):
        raise LeaderboardError(f"{path}: a mapping of model_key to reproduction record, not {type(records).__name__}")
    return records


def validate_all(directory: Path = REPO_ROOT / "leaderboard", root: Path | None = None, with_dataset: bool = True) -> int:
    """Check every entry of a folder (or one entry file) against its official dataset's test splits,
    labels and version (:mod:`thermobench.official_datasets`).

    Predictions paths are relative to each entry's folder (``root`` overrides that).
    """
    entries = load_entries(directory)
    keys = [entry.get("model_key") for _, entry in entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise LeaderboardError(f"model_key used by more than one entry: {duplicates}")
    datasets: dict[str, tuple] = {}
    for path, entry in entries:
        check_schema(entry, path.name)
        expected, version, reproduced = None, None, None
        if with_dataset:
            name, task_name = entry["dataset"]["name"], entry["task"]["name"]
            if name not in datasets:
                datasets[name] = official_data(name, path.name)
            expected, version = _expected_rows(datasets[name], task_name), datasets[name][1]
            reproduced = read_reproductions(path.parent)
        check_entry(entry, root or path.parent, expected, version, label=path.name, reproduced=reproduced)
        if path.stem != entry["model_key"]:
            raise LeaderboardError(f"{path.name}: file name must be <model_key>.yml ({entry['model_key']}.yml)")
    return len(entries)


def official_data(name: str, label: str) -> tuple[dict[str, pd.DataFrame], str]:
    """An official dataset's test splits (checksum checked) and version; anything else is a LeaderboardError."""
    from thermobench.official_datasets import DatasetNotOfficialError, official_test_frames

    try:
        return official_test_frames(name)
    except DatasetNotOfficialError as error:
        raise LeaderboardError(f"{label}: {error}") from None


def _expected_rows(data: tuple[dict[str, pd.DataFrame], str], task_name: str) -> dict[str, pd.DataFrame]:
    """Per split configuration: the labelled test rows and their true targets (from the official task)."""
    from thermobench.tasks import Task

    official = official_task(task_name)
    task = Task(**{k: v for k, v in official.items() if k != "_target_"})
    frames, _ = data
    expected = {}
    for split, frame in frames.items():
        if task.target not in frame.columns:
            raise LeaderboardError(f"the dataset has no column {task.target!r} to score task {task_name!r} against")
        labelled = frame.loc[np.isfinite(pd.to_numeric(frame[task.target], errors="coerce").to_numpy(float))]
        expected[split] = labelled[list(KEY_COLUMNS)].assign(target=task.labels(labelled))
    return expected


def reproduce(entry_path: Path, run_dir: Path) -> dict:
    """Re-predict an entry with ``evaluate.py`` from a train.py run directory and record the reproduction.

    The run's model files must be the ones the entry names (``checkpoints``, sha256), and the fresh
    predictions must equal the entry's file row by row (within :data:`REPRODUCE_RTOL`/``ATOL``). On
    success the entry's predictions checksum is written to :data:`REPRODUCTIONS` beside it, which is
    what lets an entry that reproduces the test labels through ``validate``.
    """
    import datetime
    import subprocess
    import sys
    import tempfile

    (path, entry), = load_entries(entry_path)
    check_schema(entry, path.name)
    data = official_data(entry["dataset"]["name"], path.name)
    check_entry(entry, path.parent, _expected_rows(data, entry["task"]["name"]), data[1], label=path.name, reproduced=None)
    named = entry.get("checkpoints")
    if not named:
        raise LeaderboardError(f"{path.name}: names no checkpoints (sha256 per split), so nothing can reproduce it; "
                               "evaluate.py writes them")
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, str(REPO_ROOT / "evaluate.py"), f"ckpt_path={Path(run_dir).resolve()}",
                   f"leaderboard_dir={scratch}", f"model_key={entry['model_key']}", f"dataset={entry['dataset']['name']}",
                   "feature_importance=false", f"hydra.run.dir={scratch}/hydra"]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise LeaderboardError(f"{path.name}: evaluate.py failed on {run_dir}:\n{done.stderr[-2000:]}")
        fresh_entry = yaml.safe_load((Path(scratch) / f"{entry['model_key']}.yml").read_text())
        fresh = pd.read_parquet(Path(scratch) / fresh_entry["predictions"]["path"])
    got = {split: info["sha256"] for split, info in fresh_entry["checkpoints"].items()}
    want = {split: info["sha256"] for split, info in named.items()}
    if got != want:
        raise LeaderboardError(f"{path.name}: {run_dir} holds other model files than the entry names "
                               f"(sha256 per split: entry {want}, run {got})")
    submitted = pd.read_parquet(path.parent / entry["predictions"]["path"])
    keys = ["split", *KEY_COLUMNS]
    merged = submitted[[*keys, "prediction"]].merge(fresh[[*keys, "prediction"]], on=keys, how="outer",
                                                   suffixes=("", "_fresh"), indicator=True)
    unmatched = merged["_merge"] != "both"
    if unmatched.any():
        raise LeaderboardError(f"{path.name}: {int(unmatched.sum())} rows are predicted by only one of the entry and "
                               "the re-run")
    a, b = merged["prediction"].to_numpy(float), merged["prediction_fresh"].to_numpy(float)
    off = ~np.isclose(a, b, rtol=REPRODUCE_RTOL, atol=REPRODUCE_ATOL)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise LeaderboardError(
            f"{path.name}: the checkpoints do not reproduce the predictions file: {int(off.sum())} rows differ, e.g. "
            f"{tuple(merged.loc[i, keys])}: entry {a[i]:.6g}, re-run {b[i]:.6g}"
        )
    records = read_reproductions(path.parent)
    records[entry["model_key"]] = {"predictions_sha256": entry["predictions"]["sha256"], "checkpoints": want,
                                   "max_abs_difference": float(np.max(np.abs(a - b))),
                                   "date": datetime.date.today().isoformat()}
    (path.parent / REPRODUCTIONS).write_text(json.dumps(dict(sorted(records.items())), indent=1) + "\n")
    return records[entry["model_key"]]


def ranking(entries: list[dict], task: str, split: str, metric: str) -> list[dict]:
    """Active entries of a task that report ``metric`` on ``split``, best first by its direction.

    Call it on the entries of one dataset version: rankings never mix datasets."""
    rows = [e for e in entries if e["task"]["name"] == task and e["status"] == "active" and metric in e["metrics"].get(split, {})]
    sign = 1 if metrics.DIRECTIONS[metric] == "lower" else -1
    return sorted(rows, key=lambda e: sign * e["metrics"][split][metric]["value"])


def _format(value: float) -> str:
    return f"{value:.4g}"


def mean_ratio(mean_mae: float, mae: float) -> str:
    """The mean baseline's MAE over the model's, readable: "exact" for an MAE of 0, three digits otherwise."""
    if mae == 0:
        return "∞ (exact)"
    ratio = mean_mae / mae
    return f"{ratio:.2f}" if ratio < 1000 else f"{ratio:.3g}"


def render(directory: Path = REPO_ROOT / "leaderboard", markdown: Path = REPO_ROOT / "LEADERBOARD.md",
           figure: Path | None = None) -> tuple[Path, Path]:
    """Write the Markdown tables and the ranking figure from the entries in ``directory``: one section per
    dataset version, each table with that dataset's own mean baseline."""
    entries = [entry for _, entry in load_entries(directory)]
    figure = figure or Path(directory) / "leaderboard.png"
    lines = ["# thermobench leaderboard", "",
             "Generated by `python -m thermobench.leaderboard render` from `leaderboard/*.yml`; do not edit by hand.",
             "Entries are ranked only against entries on the same dataset version.",
             "Each table is sorted by its first metric in its declared direction (↓ lower is better, ↑ higher).",
             "`× mean` is the same dataset's mean baseline MAE divided by the model's (higher is better).", ""]
    panels = []
    for dataset, version in sorted({(e["dataset"]["name"], e["dataset"]["version"]) for e in entries}):
        lines += [f"## {dataset} {version}", ""]
        on_dataset = [e for e in entries if (e["dataset"]["name"], e["dataset"]["version"]) == (dataset, version)]
        for task in sorted({e["task"]["name"] for e in on_dataset}):
            lines += _task_tables([e for e in on_dataset if e["task"]["name"] == task], f"{dataset} {version}", panels)
    Path(markdown).write_text("\n".join(lines))
    _plot(panels, figure)
    return Path(markdown), Path(figure)


def _task_tables(task_entries: list[dict], dataset: str, panels: list) -> list[str]:
    task = task_entries[0]["task"]["name"]
    kind, unit = task_entries[0]["task"]["kind"], task_entries[0]["task"]["unit"]
    names = metrics.CLASSIFICATION_METRICS if kind == "classification" else metrics.REGRESSION_METRICS
    primary = metrics.PRIMARY[kind]
    lines = [f"### {task} (`{task_entries[0]['task']['target']}`, {kind}, unit {unit})", ""]
    for split in ("random", "ood"):
        ranked = ranking(task_entries, task, split, primary)
        if not ranked:
            continue
        mean = next((e for e in ranked if e["model_name"] == "mean"), None)
        header = ["model", *[f"{n} {'↓' if metrics.DIRECTIONS[n] == 'lower' else '↑'}" for n in names], "n"]
        if kind == "regression" and mean:
            header.append("× mean")
        header += ["train s"]
        lines += [f"**{split} split** (test rows)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in ranked:
            values = e["metrics"][split]
            cells = [f"[{e['model_name']}](leaderboard/{e['model_key']}.yml)"]
            cells += [_format(values[n]["value"]) if n in values else "" for n in names]
            cells.append(str(values["n"]))
            if kind == "regression" and mean:
                cells.append(mean_ratio(mean["metrics"][split]["mae"]["value"], values["mae"]["value"]))
            cells += [_format(e["run_time"]["train_s"].get(split, float("nan")))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        panels.append((f"{dataset} {task}", split, primary, unit, ranked))
    superseded = [e for e in task_entries if e["status"] == "superseded"]
    if superseded:
        lines += ["Superseded: " + ", ".join(f"{e['model_key']} (by {e.get('superseded_by', '?')})" for e in superseded), ""]
    return lines


def _plot(panels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.2 + 0.45 * max(len(p[4]) for p in panels) * len(panels)),
                             squeeze=False)
    for ax, (task, split, metric, unit, ranked) in zip(axes[:, 0], panels):
        names = [e["model_name"] for e in ranked][::-1]
        values = [e["metrics"][split][metric]["value"] for e in ranked][::-1]
        colors = ["0.6" if n in ("mean", "harmonic") else "tab:blue" for n in names]
        ax.barh(names, values, color=colors)
        arrow = "lower is better" if metrics.DIRECTIONS[metric] == "lower" else "higher is better"
        shown_unit = "" if metric in metrics.UNITLESS or unit == "1" else f" ({unit})"
        ax.set_title(f"{task} — {split} test — {metric}{shown_unit}, {arrow}", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m thermobench.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["validate", "render", "register"])
    parser.add_argument("folder", nargs="?", type=Path, help="register: the dataset folder (e.g. thermobench/data/thermobench-0.2)")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / "leaderboard", help="a folder of entries, or one entry file")
    parser.add_argument("--reproduce", type=Path, metavar="RUN_DIR",
                        help="validate: re-predict the entry (--dir ENTRY.yml) from this train.py run with evaluate.py")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "LEADERBOARD.md")
    args = parser.parse_args(argv)
    try:
        if args.command == "register":
            from thermobench.official_datasets import DatasetNotOfficialError, register

            if args.folder is None:
                parser.error("register needs the dataset folder, e.g. thermobench/data/thermobench-0.2")
            try:
                record, previous = register(args.folder)
            except DatasetNotOfficialError as error:
                raise LeaderboardError(str(error)) from None
            was = f" (was {previous['version']} {previous['test_labels_sha256'][:12]}…)" if previous else " (new)"
            print(f"registered {record['name']} {record['version']}: test labels sha256 {record['test_labels_sha256'][:12]}…{was}")
        elif args.command == "validate" and args.reproduce is not None:
            record = reproduce(args.dir, args.reproduce)
            print(f"{args.dir} reproduced from {args.reproduce} (largest difference {record['max_abs_difference']:.3g}); "
                  f"recorded in {Path(args.dir).parent / REPRODUCTIONS}")
        elif args.command == "validate":
            print(f"{validate_all(args.dir)} entries valid")
        else:
            validate_all(args.dir)
            markdown, figure = render(args.dir, args.markdown)
            print(f"wrote {markdown} and {figure}")
    except LeaderboardError as error:
        raise SystemExit(f"invalid: {error}") from None


if __name__ == "__main__":
    main()
