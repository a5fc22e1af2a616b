"""Lightning's Rich progress bar without its per-step cost."""

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from aelab.models.stages import TRAIN, VAL

log = logging.getLogger(__name__)


class ProgressBar(RichProgressBar):
    """A `RichProgressBar` that hands a training step to the display only when it redraws, and
    shows the training metrics although they are not logged with `prog_bar`.

    Lightning reads every progress-bar metric back (`.item()`) after every training step, twice
    (its logger connector, then its bar), although the bar redraws only `refresh_rate` times a
    second: CPU time every step and, on a GPU, a host-device sync every step. So the models log
    `train/...` without `prog_bar`, and this bar reads them from `trainer.callback_metrics` when
    it redraws. It passes a step on when 1 / `refresh_rate` seconds have gone by since the last
    one it showed, and always the epoch's last step, so what is drawn is the same.

    Two redraws a second by default, not Lightning's 100 or tqdm's 10: Rich lays the bar out
    again at every redraw, in a thread that holds the GIL, and training waits for it
    (docs/benchmarks.md has what that cost a VAE at 10 a second).

    Where the output is not a terminal (a SLURM or nohup job's log file), Rich draws nothing until
    the stage ends; there the bar logs one line per epoch instead (`Epoch 4/10: 430 steps in 2.9 s;
    train/loss ..., val/loss ...`, counted from 1), which also lands in the run's `train.log`.
    """

    def __init__(self, refresh_rate: int = 2, **kwargs) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._last_shown = float("-inf")
        self._epoch_start: float | None = None  # None: this process resumed past the start
        self._validated = False
        self._steps = 0

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        shown = super().get_metrics(trainer, pl_module)
        # Lightning shows the last 4 characters of the logger's version; ours is a run name
        shown.pop("v_num", None)
        for name, value in trainer.callback_metrics.items():
            if name.startswith(f"{TRAIN}/"):
                shown[name] = value.item()
        return shown

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if self._epoch_start is None:  # a resumed run whose epoch began without its start hook
            self.on_train_epoch_start(trainer, pl_module)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._steps = batch_idx + 1
        if not self.is_enabled:
            return
        now = time.monotonic()
        last_step = batch_idx + 1 >= self.total_train_batches
        if last_step or now - self._last_shown >= 1 / self.refresh_rate:
            self._last_shown = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is not None:
            # counted from 1 as in the log line (Lightning's bar reads `Epoch 0/0` for one epoch)
            label = f"{epoch_label(trainer):{len(self.validation_description)}}"
            self.progress.update(self.train_progress_bar_id, description=label)
        self._epoch_start = time.monotonic()
        self._validated = False
        self._steps = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.is_enabled and not sys.stdout.isatty():
            log.info(self.epoch_summary(trainer))
        self._epoch_start, self._steps = None, 0

    def epoch_summary(self, trainer: L.Trainer) -> str:
        """`Epoch 4/10: 430 steps in 2.9 s; train/loss 110.79, ..., val/loss 106.86, ...`:
        the epoch's last logged training values and, if it validated, its validation means (not
        an earlier epoch's). A run resumed from a checkpoint written after an epoch's last step
        (SIGTERM there) ends that epoch without starting it (no count or time to give) and, in
        Lightning 2.6, starts the next one without its start hook (started at its first batch,
        which also gives Rich's bar this label, not Lightning's `Epoch 1/1`)."""
        took = (
            f"{self._steps} steps in {time.monotonic() - self._epoch_start:.1f} s"
            if self._epoch_start is not None
            else "resumed after its last step"
        )
        stages = (f"{TRAIN}/", f"{VAL}/") if self._validated else (f"{TRAIN}/",)
        metrics = ", ".join(
            f"{name} {float(value):.5g}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(stages)
        )
        return f"{epoch_label(trainer)}: {took}; {metrics}"


def epoch_label(trainer: L.Trainer) -> str:
    """`Epoch 1/1` for the first of one epoch: counted from 1, in the bar and the log line
    (checkpoint names and `best_epoch` keep Lightning's count from 0)."""
    epoch = f"Epoch {trainer.current_epoch + 1}"
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        epoch += f"/{trainer.max_epochs}"
    return epoch
