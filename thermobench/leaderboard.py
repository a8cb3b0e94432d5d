"""The leaderboard as data: one YAML per submission, validated, ranked by declared metric directions.

``python -m thermobench.leaderboard validate`` checks every entry (schema, predictions, dataset
version, that the stored metrics are reproduced from the predictions file);
``python -m thermobench.leaderboard render`` writes ``LEADERBOARD.md`` and ``leaderboard/leaderboard.png``.
"""

from __future__ import annotations

import argparse
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


def check_entry(entry: dict, root: Path = REPO_ROOT, expected: dict[str, pd.DataFrame] | None = None,
                dataset_version: str | None = None, label: str = "entry") -> None:
    """Validate one entry: schema, its task, predictions file and its metrics.

    Args:
        root: the folder the predictions path is relative to (the entry's own folder).
        expected: per split configuration, the test rows the predictions must cover and their true
            targets (``target`` column). Given, the metrics are recomputed against these targets.
        dataset_version: the version of the dataset the leaderboard is scored on (optional).
    """
    import jsonschema

    try:
        jsonschema.validate(entry, ENTRY_SCHEMA)
    except jsonschema.ValidationError as error:
        where = "/".join(map(str, error.absolute_path)) or "top level"
        raise LeaderboardError(f"{label}: schema violation at {where}: {error.message}") from None
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
            entries.append((file, yaml.safe_load(file.read_text())))
        except yaml.YAMLError as error:
            raise LeaderboardError(f"{file.name}: not valid YAML ({error})") from None
    return entries


def validate_all(directory: Path = REPO_ROOT / "leaderboard", root: Path | None = None, with_dataset: bool = True) -> int:
    """Check every entry of a folder (or one entry file) against the dataset's test splits, labels and version.

    Predictions paths are relative to each entry's folder (``root`` overrides that).
    """
    entries = load_entries(directory)
    keys = [entry.get("model_key") for _, entry in entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise LeaderboardError(f"model_key used by more than one entry: {duplicates}")
    cache: dict[tuple, tuple] = {}
    for path, entry in entries:
        expected, version = None, None
        if with_dataset:
            name = entry.get("dataset", {}).get("name", "thermobench-mini")
            task_name = entry.get("task", {}).get("name")
            if (name, task_name) not in cache:
                cache[(name, task_name)] = _expected_rows(name, task_name)
            expected, version = cache[(name, task_name)]
        check_entry(entry, root or path.parent, expected, version, label=path.name)
        if path.stem != entry["model_key"]:
            raise LeaderboardError(f"{path.name}: file name must be <model_key>.yml ({entry['model_key']}.yml)")
    return len(entries)


def _expected_rows(dataset: str, task_name: str) -> tuple[dict[str, pd.DataFrame], str]:
    """Per split configuration: the labelled test rows and their true targets (from the official task)."""
    from thermobench.datamodule import SPLIT_CONFIGS, load_frame
    from thermobench.tasks import Task

    official = official_task(task_name)
    task = Task(**{k: v for k, v in official.items() if k != "_target_"})
    target = task.target

    expected, versions = {}, set()
    for split in SPLIT_CONFIGS:
        frame = load_frame(dataset, split, "test")
        versions |= set(frame["dataset_version"].astype(str))
        if target not in frame.columns:
            raise LeaderboardError(f"{dataset}: no column {target!r} to score against")
        labelled = frame.loc[np.isfinite(pd.to_numeric(frame[target], errors="coerce").to_numpy(float))]
        expected[split] = labelled[list(KEY_COLUMNS)].assign(target=task.labels(labelled))
    if len(versions) != 1:
        raise LeaderboardError(f"{dataset}: test splits hold several dataset versions {sorted(versions)}")
    return expected, versions.pop()


def ranking(entries: list[dict], task: str, split: str, metric: str) -> list[dict]:
    """Active entries of a task that report ``metric`` on ``split``, best first by its direction."""
    rows = [e for e in entries if e["task"]["name"] == task and e["status"] == "active" and metric in e["metrics"].get(split, {})]
    sign = 1 if metrics.DIRECTIONS[metric] == "lower" else -1
    return sorted(rows, key=lambda e: sign * e["metrics"][split][metric]["value"])


def _format(value: float) -> str:
    return f"{value:.4g}"


def render(directory: Path = REPO_ROOT / "leaderboard", markdown: Path = REPO_ROOT / "LEADERBOARD.md",
           figure: Path | None = None) -> tuple[Path, Path]:
    """Write the Markdown tables and the ranking figure from the entries in ``directory``."""
    entries = [entry for _, entry in load_entries(directory)]
    figure = figure or Path(directory) / "leaderboard.png"
    lines = ["# thermobench leaderboard", "",
             "Generated by `python -m thermobench.leaderboard render` from `leaderboard/*.yml`; do not edit by hand.",
             "Each table is sorted by its first metric in its declared direction (↓ lower is better, ↑ higher).",
             "`× mean` is the mean baseline's MAE divided by the model's (higher is better).", ""]
    tasks = sorted({e["task"]["name"] for e in entries})
    panels = []
    for task in tasks:
        task_entries = [e for e in entries if e["task"]["name"] == task]
        kind, unit = task_entries[0]["task"]["kind"], task_entries[0]["task"]["unit"]
        names = metrics.CLASSIFICATION_METRICS if kind == "classification" else metrics.REGRESSION_METRICS
        primary = metrics.PRIMARY[kind]
        lines += [f"## {task} (`{task_entries[0]['task']['target']}`, {kind}, unit {unit})", ""]
        for split in ("random", "ood"):
            ranked = ranking(task_entries, task, split, primary)
            if not ranked:
                continue
            mean = next((e for e in ranked if e["model_name"] == "mean"), None)
            header = ["model", *[f"{n} {'↓' if metrics.DIRECTIONS[n] == 'lower' else '↑'}" for n in names], "n"]
            if kind == "regression" and mean:
                header.append("× mean")
            header += ["train s", "dataset"]
            lines += [f"**{split} split** (test rows)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for e in ranked:
                values = e["metrics"][split]
                cells = [f"[{e['model_name']}](leaderboard/{e['model_key']}.yml)"]
                cells += [_format(values[n]["value"]) if n in values else "" for n in names]
                cells.append(str(values["n"]))
                if kind == "regression" and mean:
                    ratio = mean["metrics"][split]["mae"]["value"] / max(values["mae"]["value"], 1e-300)
                    cells.append(f"{ratio:.2f}")
                cells += [_format(e["run_time"]["train_s"].get(split, float("nan"))), e["dataset"]["version"]]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            panels.append((task, split, primary, unit, ranked))
        superseded = [e for e in task_entries if e["status"] == "superseded"]
        if superseded:
            lines += ["Superseded: " + ", ".join(f"{e['model_key']} (by {e.get('superseded_by', '?')})" for e in superseded), ""]
    Path(markdown).write_text("\n".join(lines))
    _plot(panels, figure)
    return Path(markdown), Path(figure)


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
    parser.add_argument("command", choices=["validate", "render"])
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / "leaderboard", help="a folder of entries, or one entry file")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "LEADERBOARD.md")
    args = parser.parse_args(argv)
    if args.command == "validate":
        try:
            print(f"{validate_all(args.dir)} entries valid")
        except LeaderboardError as error:
            raise SystemExit(f"invalid: {error}") from None
    else:
        validate_all(args.dir)
        markdown, figure = render(args.dir, args.markdown)
        print(f"wrote {markdown} and {figure}")


if __name__ == "__main__":
    main()
