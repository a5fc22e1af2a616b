"""Each loss term's mean over every image of a validation or test epoch, on all ranks together."""

import torch
from lightning.pytorch.strategies import Strategy


class EpochMeans:
    """Sums and image counts of each term, added up across ranks at the end, so that shards of
    unequal size (the test set on 3 ranks) still give the mean over the whole set. Written out
    because Lightning's mean over ranks divides its integer image count in place (rounding it),
    and torchmetrics' MeanMetric reads a value back to the host at every update (its NaN
    check)."""

    def __init__(self) -> None:
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}  # name: (sum, images)

    def add(self, terms: dict[str, torch.Tensor], count: int) -> None:
        """The terms of a batch of `count` images, each a mean over them."""
        for name, value in terms.items():
            total, images = self.sums.get(name, (0.0, 0))
            self.sums[name] = (total + value.detach() * count, images + count)

    def reduced(self, strategy: Strategy) -> dict[str, torch.Tensor]:
        """The means over every image of every rank; the sums start again from nothing."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        totals = torch.stack([self.sums[name][0] for name in names])
        counts = torch.tensor([self.sums[name][1] for name in names], device=totals.device)
        totals = strategy.reduce(totals, reduce_op="sum")
        counts = strategy.reduce(counts.to(totals.dtype), reduce_op="sum")
        self.sums = {}
        return dict(zip(names, totals / counts, strict=True))
