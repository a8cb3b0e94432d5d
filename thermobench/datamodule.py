"""LightningDataModule over a thermobench dataset: fixed splits, task labels, cached graphs.

The dataset is read with :func:`thermobench.load_dataset` (the embedded ``thermobench-mini`` by
default; a local folder or a Hub id by config). ``split`` picks one of the dataset's fixed,
material-grouped split configurations (``random`` or ``ood``); nothing is re-split here.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule

from thermobench.graphs import build_graphs
from thermobench.tasks import Task

STAGES = ("train", "validation", "test")
SPLIT_CONFIGS = ("random", "ood")


def load_frame(dataset: str, split_config: str, stage: str, revision: str | None = None) -> pd.DataFrame:
    """One split of one split configuration as a pandas DataFrame."""
    return load_frames(dataset, split_config, revision)[stage]


def load_frames(dataset: str, split_config: str, revision: str | None = None) -> dict[str, pd.DataFrame]:
    """All splits (train, validation, test) of one split configuration, loaded at once."""
    from thermobench.dataset import load_dataset

    if split_config not in SPLIT_CONFIGS:
        raise ValueError(f"unknown split configuration {split_config!r}; valid: {', '.join(SPLIT_CONFIGS)}")
    kwargs = {"revision": revision} if revision else {}
    try:
        tables = load_dataset(dataset, name=split_config, **kwargs)
    except Exception as error:  # split sizes in the card disagree with the files (card not yet rewritten): trust the files
        if type(error).__name__ != "NonMatchingSplitsSizesError":
            raise
        tables = load_dataset(dataset, name=split_config, verification_mode="no_checks", **kwargs)
    missing = [stage for stage in STAGES if stage not in tables]
    if missing:
        raise ValueError(f"{dataset}/{split_config} lacks split(s) {', '.join(missing)}")
    return {stage: tables[stage].to_pandas() for stage in STAGES}


class ThermoDataModule(LightningDataModule):
    """Rows of (material, temperature) with labels of ``task`` and graphs of their structures.

    Args:
        dataset: ``thermobench-mini`` (embedded), a local dataset folder or a Hub id.
        split: split configuration, ``random`` or ``ood``.
        task: the :class:`~thermobench.tasks.Task` whose target labels the rows.
        cutoff_A: graph neighbour cutoff (≥ the largest cutoff a network uses).
        cache_dir: where built graphs are cached (None: no cache).
        batch_size, num_workers: data-loader settings.
        revision: dataset revision (Hub ids).
    """

    def __init__(self, dataset: str = "thermobench-mini", split: str = "random", task: Task | None = None,
                 cutoff_A: float = 5.0, cache_dir: str | None = None, batch_size: int = 32, num_workers: int = 0,
                 revision: str | None = None):
        super().__init__()
        if split not in SPLIT_CONFIGS:
            raise ValueError(f"unknown split configuration {split!r}; valid: {', '.join(SPLIT_CONFIGS)}")
        self.dataset, self.split, self.task = dataset, split, task
        self.cutoff_A, self.cache_dir, self.revision = cutoff_A, cache_dir, revision
        self.batch_size, self.num_workers = batch_size, num_workers
        self.frames: dict[str, pd.DataFrame] = {}
        self.dropped: dict[str, int] = {}
        self.graph_sets: dict[str, list] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.frames:
            return
        if self.task is None:
            raise ValueError("ThermoDataModule needs a task before setup()")
        tables = load_frames(self.dataset, self.split, self.revision)
        for name in STAGES:
            frame = tables[name]
            labelled = self.task.has_label(frame)
            self.dropped[name] = int((~labelled).sum())
            self.frames[name] = frame[labelled].reset_index(drop=True)
        if not len(self.frames["train"]):
            raise ValueError(f"no training rows with a {self.task.target!r} label in {self.dataset}/{self.split}")

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {name: self.task.labels(frame) for name, frame in self.frames.items()}

    @property
    def dataset_version(self) -> str:
        versions = set()
        for frame in self.frames.values():
            if "dataset_version" in frame:
                versions |= set(frame["dataset_version"].astype(str))
        if len(versions) != 1:
            raise ValueError(f"{self.dataset}/{self.split}: expected one dataset_version, found {sorted(versions)}")
        return versions.pop()

    def target_statistics(self) -> tuple[float, float]:
        y = self.task.labels(self.frames["train"])
        return float(y.mean()), float(y.std())

    def graphs(self, name: str) -> list:
        """Graphs of one split, each with ``y``, ``temperature_K`` and ``row`` (index into the frame)."""
        if name not in self.graph_sets:
            frame = self.frames[name]
            by_material = build_graphs(frame.to_dict("records"), self.cutoff_A, self._cache_path())
            y = self.task.labels(frame)
            items = []
            for row, (material, temperature) in enumerate(zip(frame["material_id"], frame["temperature_K"])):
                graph = by_material[material].clone()
                graph.y = torch.tensor([y[row]], dtype=torch.float32)
                graph.temperature_K = torch.tensor([float(temperature)], dtype=torch.float32)
                graph.row = torch.tensor([row])
                items.append(graph)
            self.graph_sets[name] = items
        return self.graph_sets[name]

    def _cache_path(self) -> str | None:
        return os.fspath(self.cache_dir) if self.cache_dir else None

    def _loader(self, name: str, shuffle: bool, drop_last: bool = False):
        from torch_geometric.loader import DataLoader

        return DataLoader(self.graphs(name), batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=drop_last)

    def train_dataloader(self):
        # a last batch of one single-atom crystal breaks batch norm (CGCNN); shuffling still visits every row
        return self._loader("train", shuffle=True, drop_last=len(self.graphs("train")) > self.batch_size)

    def val_dataloader(self):
        return self._loader("validation", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)
