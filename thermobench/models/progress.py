"""One log line per epoch, so a run's progress shows in the console and in Hydra's ``train.log``."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("thermobench.train")


class EpochProgress(Callback):
    """Logs the epoch, the training loss and the validation metrics every ``every_n_epochs`` epochs."""

    def __init__(self, every_n_epochs: int = 10):
        self.every_n_epochs = max(1, int(every_n_epochs))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or (epoch % self.every_n_epochs and epoch + 1 != trainer.max_epochs):
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        text = ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))
        log.info("epoch %d/%d: %s", epoch + 1, trainer.max_epochs, text)
