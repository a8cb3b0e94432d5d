"""Lightning module wrapping a graph network (``net``) for one task.

The net, optimizer and scheduler arrive as Hydra configs and are stored in the checkpoint's
hyperparameters together with the task and the training-target scaling, so
``ThermoLitModule.load_from_checkpoint(path)`` alone restores a working model.
"""

from __future__ import annotations

import hydra
import torch
from lightning.pytorch import LightningModule
from omegaconf import DictConfig, OmegaConf

from thermobench.tasks import Task


def _plain(config):
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class ThermoLitModule(LightningModule):
    """Regression (MSE on standardized targets) or binary classification (BCE on logits).

    Args:
        net: Hydra config of an ``nn.Module`` mapping a graph batch to one number per graph.
        optimizer: Hydra config of a partial optimizer (``_partial_: true``).
        scheduler: optional Hydra config of a partial ReduceLROnPlateau-style scheduler on ``val/loss``.
        task: :class:`thermobench.tasks.Task` fields.
        target_mean, target_std: training-target statistics (regression outputs are scaled by them).
    """

    def __init__(self, net: dict, optimizer: dict, task: dict, scheduler: dict | None = None,
                 target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        net, optimizer, scheduler, task = _plain(net), _plain(optimizer), _plain(scheduler), _plain(task)
        self.save_hyperparameters(logger=False)
        self.net = hydra.utils.instantiate(net)
        self.task = Task(**task)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std) if target_std > 0 else 1.0))

    def forward(self, batch) -> torch.Tensor:
        """Predictions in the target's unit (classification: probability of the positive class)."""
        raw = self.net(batch)
        if self.task.is_classification:
            return torch.sigmoid(raw)
        return raw * self.target_std + self.target_mean

    def model_step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.net(batch)
        if self.task.is_classification:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(raw, batch.y)
            return loss, torch.sigmoid(raw)
        loss = torch.nn.functional.mse_loss(raw, (batch.y - self.target_mean) / self.target_std)
        return loss, raw * self.target_std + self.target_mean

    def _log_stage(self, stage: str, batch) -> torch.Tensor:
        loss, prediction = self.model_step(batch)
        size = int(batch.num_graphs)
        self.log(f"{stage}/loss", loss, batch_size=size, prog_bar=stage != "test", on_epoch=True, on_step=False)
        if self.task.is_classification:
            value = ((prediction > 0.5) == (batch.y > 0.5)).float().mean()
            self.log(f"{stage}/accuracy", value, batch_size=size, on_epoch=True, on_step=False)
        else:
            self.log(f"{stage}/mae", (prediction - batch.y).abs().mean(), batch_size=size, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch, batch_idx):
        return self._log_stage("train", batch)

    def validation_step(self, batch, batch_idx):
        return self._log_stage("val", batch)

    def test_step(self, batch, batch_idx):
        return self._log_stage("test", batch)

    def predict_step(self, batch, batch_idx):
        return self(batch)

    def configure_optimizers(self):
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(params=[p for p in self.parameters() if p.requires_grad])
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = hydra.utils.instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}


