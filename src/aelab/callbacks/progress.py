"""Lightning's Rich progress bar without its per-step cost."""

import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from aelab.models.base import TRAIN


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
    again at every redraw, in a thread that holds the GIL for about 5 ms in a terminal, and
    training waits for it. At 10 a second that cost a VAE 3 to 5% of its training speed here.
    """

    def __init__(self, refresh_rate: int = 2, **kwargs) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._last_shown = float("-inf")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        shown = super().get_metrics(trainer, pl_module)
        for name, value in trainer.callback_metrics.items():
            if name.startswith(f"{TRAIN}/"):
                shown[name] = value.item()
        return shown

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not self.is_enabled:
            return
        now = time.monotonic()
        last_step = batch_idx + 1 >= self.total_train_batches
        if last_step or now - self._last_shown >= 1 / self.refresh_rate:
            self._last_shown = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
