"""Each loss term's mean over every image of a validation or test epoch, on all ranks together."""

from typing import Any

import lightning as L
import torch

from aelab.models.stages import TEST, VAL


class EvaluationMeans(L.LightningModule):
    """The hooks that log, at the end of each validation and test epoch, the mean of each term
    that `add_to_means` was given (`val/loss`, `test/kl`, ...) over every image of every rank.

    Sums and image counts are added up across ranks, so shards of unequal size (the test set on
    3 ranks) still give the mean over the whole set. Written out because Lightning's mean over
    ranks divides its integer image count in place (rounding it), and torchmetrics' MeanMetric
    reads a value back to the host at every update (its NaN check)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sums: dict[str, tuple[torch.Tensor, int]] = {}  # name: (sum, images)

    def add_to_means(self, terms: dict[str, torch.Tensor], count: int) -> None:
        """The terms of a batch of `count` images, each a mean over them."""
        for name, value in terms.items():
            total, images = self._sums.get(name, (0.0, 0))
            self._sums[name] = (total + value.detach() * count, images + count)

    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def on_test_epoch_start(self) -> None:
        self._sums = {}

    def on_validation_epoch_end(self) -> None:
        self._log_means(VAL)

    def on_test_epoch_end(self) -> None:
        self._log_means(TEST)

    def _log_means(self, stage: str) -> None:
        if not self._sums:
            return
        names = sorted(self._sums)
        totals = torch.stack([self._sums[name][0] for name in names])
        counts = torch.tensor([self._sums[name][1] for name in names], device=totals.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        counts = self.trainer.strategy.reduce(counts.to(totals.dtype), reduce_op="sum")
        for name, mean in zip(names, totals / counts, strict=True):
            self.log(f"{stage}/{name}", mean, prog_bar=True)
        self._sums = {}
