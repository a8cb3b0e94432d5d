"""Load a trained model of any kind and predict one split of a datamodule, rows in frame order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_model(path: str | Path):
    """A :class:`~thermobench.models.module.ThermoLitModule` from a ``.ckpt`` or a tabular model from ``.joblib``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    if path.suffix == ".ckpt":
        from thermobench.models.module import ThermoLitModule

        return ThermoLitModule.load_from_checkpoint(path, map_location="cpu").eval()
    if path.suffix == ".joblib":
        from thermobench.models.tabular import load_tabular

        return load_tabular(path)
    raise ValueError(f"{path}: expected a Lightning checkpoint (.ckpt) or a tabular model (.joblib)")




@torch.no_grad()
def predict(model, datamodule, stage: str) -> np.ndarray:
    """Predictions for ``datamodule.frames[stage]`` in row order (classification: probabilities)."""
    from lightning.pytorch import LightningModule

    frame = datamodule.frames[stage]
    if not isinstance(model, LightningModule):
        return np.asarray(model.predict(frame), dtype=float)
    from torch_geometric.loader import DataLoader

    model.eval()
    out = np.full(len(frame), np.nan)
    for batch in DataLoader(datamodule.graphs(stage), batch_size=datamodule.batch_size, shuffle=False):
        batch = batch.to(model.device)
        out[batch.row.cpu().numpy()] = model(batch).detach().cpu().numpy().reshape(-1)
    return out
