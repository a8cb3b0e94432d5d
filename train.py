"""Train a model on a thermobench task, one fit per split configuration of the dataset.

    python train.py                                   # default: CGCNN on anharmonicity, random + ood
    python train.py model=descriptor task=freq_shift  # any model/ and task/ config
    python train.py data.splits=[random] trainer.max_epochs=50 seed=1 logger=wandb

Writes into the run directory (``logs/train/<model>-<task>/<time>/``): ``<split>/checkpoints/*.ckpt``
(graph networks) or ``<split>/model.joblib`` (tabular models), CSV logs, the resolved config
(``.hydra/``) and ``train_summary.json`` (seed, git revision, versions, timings, validation scores).
Then ``python evaluate.py ckpt_path=<run directory>``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import hydra
import lightning.pytorch as L
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("thermobench.train")  # console and Hydra's train.log


def quiet_known_noise() -> None:
    """Silence messages that say nothing about this run, once: Lightning's device lines, tips and model
    table (rank-zero info), the dataset builders' progress bars, and a deprecation inside Lightning."""
    import warnings

    import datasets

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


RUN_TIME_DEFINITION = (
    "wall-clock seconds per split from building the model to the end of fitting (Trainer.fit with validation, "
    "or estimator.fit including descriptor computation), graphs already cached, on the hardware listed"
)
PACKAGES = ("thermobench", "torch", "torch_geometric", "lightning", "matgl", "scikit-learn", "numpy", "datasets")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "n_cpus": os.cpu_count(), "n_threads": torch.get_num_threads(), "accelerator": gpu or "cpu"}


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def datamodule_for(cfg: DictConfig, task, split: str):
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("splits", None)
    datamodule = hydra.utils.instantiate(data, split=split)
    datamodule.task = task  # set after instantiate, which would turn the dataclass into a config node
    return datamodule


def _instantiate_all(group: DictConfig | None, **overrides) -> list:
    objects = []
    for name, node in (group or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            extra = overrides.get(name, {})
            objects.append(hydra.utils.instantiate(node, **extra))
    return objects


def train_split(cfg: DictConfig, task, split: str, out_dir: Path) -> dict:
    """Fit one model on ``split``'s training part; returns where it was saved and its validation scores."""
    from lightning.pytorch import LightningModule

    from thermobench import metrics
    from thermobench.models.inference import predict

    L.seed_everything(cfg.seed, workers=True)
    datamodule = datamodule_for(cfg, task, split)
    datamodule.setup("fit")
    split_dir = out_dir / split
    model_class = hydra.utils.get_class(cfg.model._target_)
    neural = issubclass(model_class, LightningModule)
    if neural:  # build the graph cache outside the timed fit
        for stage in ("train", "validation"):
            datamodule.graphs(stage)
    start = time.perf_counter()
    if neural:
        mean, std = datamodule.target_statistics()
        model = hydra.utils.instantiate(cfg.model, task=task.to_dict(), target_mean=mean, target_std=std, _recursive_=False)
        callbacks = _instantiate_all(cfg.get("callbacks"), model_checkpoint={"dirpath": str(split_dir / "checkpoints")})
        loggers = _instantiate_all(cfg.get("logger"), csv={"version": split}, wandb={"name": f"{cfg.model_name}-{task.name}-{split}"})
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                          default_root_dir=str(split_dir))
        trainer.fit(model, datamodule=datamodule)
        checkpoint = next((c.best_model_path for c in callbacks if getattr(c, "best_model_path", "")), "")
        if not checkpoint:  # fast_dev_run and runs without a checkpoint callback still leave one
            checkpoint = str(split_dir / "checkpoints" / "last.ckpt")
            trainer.save_checkpoint(checkpoint)
        artifact = Path(checkpoint)
        model = type(model).load_from_checkpoint(artifact, map_location="cpu")
        epochs = int(trainer.current_epoch)
    else:
        if cfg.get("logger"):
            log.warning(f"model={cfg.model_name} is fitted in one step without Lightning: logger "
                        f"{', '.join(cfg.logger)} records nothing (its validation scores are in train_summary.json)")
        model = hydra.utils.instantiate(cfg.model).bind(task)
        model.fit(datamodule.frames["train"], datamodule.labels["train"])
        artifact = model.save(split_dir / "model.joblib")
        epochs = None
    train_s = time.perf_counter() - start
    validation = metrics.score(datamodule.labels["validation"], predict(model, datamodule, "validation"), task.kind, task.unit)
    return {
        "artifact": str(artifact.resolve()),
        "train_s": train_s,
        "epochs": epochs,
        "n_train": len(datamodule.frames["train"]),
        "n_validation": len(datamodule.frames["validation"]),
        "n_test": len(datamodule.frames["test"]),
        "rows_without_label": datamodule.dropped,
        "dataset_version": datamodule.dataset_version,
        "validation": validation,
    }


def check_config(cfg: DictConfig) -> None:
    """Trainer and data settings that Lightning would only reject deep inside (a bare AssertionError)."""
    integers = {"trainer.max_epochs": -1, "trainer.min_epochs": 0, "trainer.log_every_n_steps": 1, "data.batch_size": 1}
    for key, minimum in integers.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{key} must be an integer >= {minimum}, not {value!r}")
    splits = list(cfg.data.splits)
    if not splits or any(s not in ("random", "ood") for s in splits):
        raise ValueError(f"data.splits must be a non-empty subset of [random, ood], not {splits}")


def train(cfg: DictConfig) -> dict:
    """Train on every split configuration in ``cfg.data.splits``; returns (and writes) the run summary."""
    check_config(cfg)
    quiet_known_noise()
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    task = hydra.utils.instantiate(cfg.task)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "model_name": cfg.model_name,
        "model_class": cfg.model._target_,
        "task": task.to_dict(),
        "dataset": cfg.data.dataset,
        "seed": cfg.seed,
        "git_revision": git_revision(),
        "requirements": versions(),
        "hardware": hardware(),
        "run_time_definition": RUN_TIME_DEFINITION,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "splits": {},
    }
    for split in cfg.data.splits:
        summary["splits"][split] = train_split(cfg, task, split, out_dir)
        score = summary["splits"][split]["validation"]
        primary = "balanced_accuracy" if task.is_classification else "mae"
        log.info(f"[{split}] {cfg.model_name} on {task.name}: validation {primary} = {score[primary]['value']:.4g} "
                 f"({summary['splits'][split]['train_s']:.1f} s)")
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info(f"run directory: {out_dir}")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="train.yaml")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
