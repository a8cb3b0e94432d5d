"""Score a trained run on the test splits and write its leaderboard entry.

    python evaluate.py ckpt_path=logs/train/cgcnn-anharmonicity/<time>     # a run directory
    python evaluate.py ckpt_path=.../random/checkpoints/best.ckpt          # one checkpoint of a run
    python evaluate.py ckpt_path=.../random/model.joblib                   # a tabular model of a run

Each split configuration is scored with the model trained on its own training part (a model that
saw the random split's training rows has seen the ood test families). Writes
``<leaderboard_dir>/predictions/<model_key>.parquet`` and ``<leaderboard_dir>/<model_key>.yml`` (by
default under ``logs/leaderboard``; ``leaderboard_dir=leaderboard`` to submit); an existing entry is
never replaced unless ``overwrite=true``. The entry is validated (schema, task, complete and unique
predictions, metrics reproduced from the file).
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import hydra
import pandas as pd
import yaml
from omegaconf import DictConfig

from thermobench import leaderboard


def locate_run(ckpt_path: str | Path) -> tuple[Path, dict, dict[str, Path]]:
    """The run directory, its summary and the model file per split configuration."""
    path = Path(ckpt_path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    run_dir = path if path.is_dir() else next((p for p in path.parents if (p / "train_summary.json").is_file()), None)
    if run_dir is None or not (run_dir / "train_summary.json").is_file():
        raise FileNotFoundError(f"{path} is not inside a train.py run directory (no train_summary.json found above it)")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    artifacts = {split: in_run(run_dir, split, info["artifact"]) for split, info in summary["splits"].items()}
    if path.is_file():  # a specific model file replaces the one its split directory recorded
        split = path.relative_to(run_dir).parts[0]
        if split not in artifacts:
            raise ValueError(f"{path} is not under one of the run's split directories {sorted(artifacts)}")
        artifacts[split] = path
    return run_dir, summary, artifacts


def in_run(run_dir: Path, split: str, recorded: str) -> Path:
    """A split's model file under ``run_dir`` (its path from the last ``<split>/`` on), else the path train.py
    recorded: a moved or downloaded run (``validate --reproduce`` on a supplied checkpoint) uses its own files."""
    path = Path(recorded)
    if split in path.parts:
        moved = run_dir.joinpath(*path.parts[len(path.parts) - 1 - path.parts[::-1].index(split):])
        if moved.is_file():
            return moved
    return path


def model_key_for(model_name: str, dataset: str, task: str) -> str:
    data = re.sub(r"[^a-z0-9.]+", "-", Path(str(dataset)).name.lower()).strip("-")
    return f"{model_name}-{data}-{task}".lower()


def evaluate(cfg: DictConfig) -> dict:
    """Predict the test split of each split configuration, write predictions and the entry; return the entry."""
    from thermobench.datamodule import ThermoDataModule
    from thermobench.models.inference import load_model, predict

    from train import quiet_known_noise

    quiet_known_noise()
    run_dir, summary, artifacts = locate_run(cfg.ckpt_path)
    dataset = cfg.get("dataset") or summary["dataset"]
    data_cfg = summary["config"]["data"]
    model_key = cfg.get("model_key") or model_key_for(summary["model_name"], dataset, summary["task"]["name"])
    out_dir = Path(cfg.leaderboard_dir)
    entry_path = out_dir / f"{model_key}.yml"
    predictions_path = out_dir / "predictions" / f"{model_key}.parquet"
    if not cfg.get("overwrite") and (entry_path.exists() or predictions_path.exists()):
        raise FileExistsError(  # checked before any scoring
            f"{entry_path} or its predictions already exist; refusing to overwrite a leaderboard entry "
            "(pass overwrite=true to replace it, or another leaderboard_dir / model_key)"
        )
    tables, model, versions = [], None, set()
    for split, artifact in artifacts.items():
        model = load_model(artifact)
        datamodule = ThermoDataModule(dataset=dataset, split=split, task=model.task, cutoff_A=data_cfg["cutoff_A"],
                                      cache_dir=data_cfg.get("cache_dir"), batch_size=data_cfg.get("batch_size", 32),
                                      revision=data_cfg.get("revision"))
        datamodule.setup("test")
        test = datamodule.frames["test"]
        version = datamodule.dataset_version
        versions.add(version)
        if version != summary["splits"][split]["dataset_version"]:
            raise leaderboard.LeaderboardError(
                f"dataset-version mismatch: {split} model trained on {summary['splits'][split]['dataset_version']!r}, "
                f"scoring dataset is {version!r}"
            )
        table = pd.DataFrame({
            "material_id": test["material_id"].astype(str), "temperature_K": test["temperature_K"].astype(float),
            "split": split, "prediction": predict(model, datamodule, "test"), "target": datamodule.labels["test"],
            "dataset_version": version, "formula": test.get("formula", test["material_id"]),
            "family": test.get("family", ""),
        })
        leaderboard.validate_predictions(table, test, version, label=f"{model_key} ({split})")
        tables.append(table)
        if cfg.get("feature_importance") and split == "random" and hasattr(model, "permutation_importance"):
            write_importance(model, test, datamodule.labels["test"], out_dir / "figures", model_key)
    predictions = pd.concat(tables, ignore_index=True)
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(predictions_path, index=False)
    root = out_dir.resolve()  # predictions paths are relative to the entry's folder
    task = summary["task"]
    entry = {
        "model_key": model_key,
        "model_name": summary["model_name"],
        "model_class": summary["model_class"],
        "authors": list(cfg.get("authors") or []),
        "description": cfg.get("description") or f"{summary['model_name']} trained by train.py with the committed configs",
        "task": {k: task[k] for k in ("name", "target", "kind", "unit", "threshold")},
        "dataset": {"name": str(dataset), "version": versions.pop() if len(versions) == 1 else "mixed"},
        "metrics": leaderboard.score_predictions(predictions, task),
        "predictions": {"path": predictions_path.resolve().relative_to(root).as_posix(),
                        "sha256": leaderboard.sha256_of(predictions_path)},
        "hardware": summary["hardware"],
        "run_time": {"train_s": {s: round(i["train_s"], 2) for s, i in summary["splits"].items()},
                     "definition": summary["run_time_definition"]},
        "requirements": summary["requirements"],
        "hyperparameters": summary["config"]["model"],
        "training": {"seed": summary["seed"], "git_revision": summary["git_revision"],
                     "trainer": {k: summary["config"]["trainer"].get(k) for k in ("max_epochs", "accelerator")},
                     "data": {k: v for k, v in data_cfg.items() if k != "cache_dir"},
                     **{f"{s}": {k: i[k] for k in ("n_train", "n_validation", "epochs", "rows_without_label")}
                        for s, i in summary["splits"].items()}},
        "date_added": datetime.date.today().isoformat(),
        "status": "active",
        # what `python -m thermobench.leaderboard validate --reproduce RUN_DIR` checks a supplied run against
        "checkpoints": {split: {"file": artifact.resolve().relative_to(run_dir).as_posix()
                                if artifact.resolve().is_relative_to(run_dir) else artifact.name,
                                "sha256": leaderboard.sha256_of(artifact)} for split, artifact in artifacts.items()},
    }
    entry = json.loads(json.dumps(entry, default=str))  # plain types only in the YAML
    leaderboard.check_entry(entry, root, label=model_key)
    entry_path.write_text(yaml.safe_dump(entry, sort_keys=False, allow_unicode=True))
    for split, values in entry["metrics"].items():
        shown = ", ".join(f"{k} {v['value']:.4g}" for k, v in values.items() if k != "n")
        print(f"[{split} test, n={values['n']}] {shown}")
    print(f"wrote {entry_path} and {predictions_path}")
    return entry


def write_importance(model, frame, y, directory: Path, model_key: str) -> Path:
    from thermobench.analysis import plot_feature_importance

    importance = model.permutation_importance(frame, y)
    directory.mkdir(parents=True, exist_ok=True)
    importance.to_csv(directory / f"{model_key}-permutation-importance.csv", index=False)
    return plot_feature_importance(importance, directory / f"{model_key}-permutation-importance.png",
                                   title=f"{model_key}: permutation importance (random test split)")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
