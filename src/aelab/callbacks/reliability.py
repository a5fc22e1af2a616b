"""Keep the work done so far when a run is interrupted or diverges."""

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aelab.errors import TrainingDiverged


class InterruptCheckpoint(L.Callback):
    """Save `<dirpath>/<filename>.ckpt` on Ctrl-C (SIGINT) or SIGTERM, so that `ckpt_path=last`
    resumes from there. Other exceptions (a diverged loss, a bug) save nothing: the weights they
    leave are not worth resuming from.

    Not Lightning's OnExceptionCheckpoint: with that one present, Lightning silently resumes
    every `fit` from "last".
    """

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            trainer.save_checkpoint(self.path)


class DivergenceGuard(L.Callback):
    """Stop with `TrainingDiverged` as soon as a checked loss is NaN or infinite.

    The training loss is checked every `trainer.log_every_n_steps` steps (not every step, which
    would stall a GPU on a host sync), and the validation loss after each validation, before
    any checkpoint of the epoch is written: the last good checkpoint is never overwritten.
    Under DDP the check reads the loss averaged over ranks, so that every rank stops at the
    same step; a rank that stopped alone would leave the others to crash in their next
    all-reduce (on a closed connection) instead of reporting the divergence.
    """

    def __init__(self, monitor: str = "val/loss") -> None:
        self.monitor = monitor

    def _fail(self, trainer: L.Trainer, what: str, value: float) -> None:
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged: {what} is {value} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); {kept}"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % trainer.log_every_n_steps and not trainer.is_last_batch:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        # a copy: DDP's reduce all-reduces in place
        loss = trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        if not torch.isfinite(loss).all():
            self._fail(trainer, "train/loss", float(loss))

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if not trainer.sanity_checking and value is not None and not math.isfinite(float(value)):
            self._fail(trainer, self.monitor, float(value))
