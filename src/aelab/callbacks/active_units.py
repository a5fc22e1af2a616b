"""The number of active units of each stochastic layer, after every validation epoch."""

import lightning as L

from aelab.evaluation.active_units import THRESHOLD, active_unit_metrics, has_posterior


class ActiveUnits(L.Callback):
    """At the end of each validation epoch, log `val/active_units` (and, for models of several
    stochastic layers, `val/active_units_1` ...): the units whose posterior mean varies over the
    first `max_images` validation images by more than `threshold` (Burda et al., 2016;
    aelab.evaluation.active_units). One pass of the encoder over those images, no draws; every
    rank computes the same number from the same images. Models without a posterior get none."""

    def __init__(self, threshold: float = THRESHOLD, max_images: int = 10000) -> None:
        self.threshold = threshold
        self.max_images = max_images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # mypy: Lightning's Trainer.datamodule is set by fit(datamodule=...), undeclared
        datamodule = getattr(trainer, "datamodule", None)
        if trainer.sanity_checking or datamodule is None or not has_posterior(pl_module):
            return
        images = datamodule.val_set.images[: self.max_images]
        metrics = active_unit_metrics(pl_module, images, "val", self.threshold)  # type: ignore[arg-type]
        for name, value in metrics.items():
            pl_module.log(name, value)
