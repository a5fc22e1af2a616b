"""The latent space in TensorBoard at the end of training."""

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from aelab.evaluation.pictures import log_latent_pictures


class LatentPictures(L.Callback):
    """When training ends, log `num_points` test codes to the embedding projector (labels and
    image sprites), `latent/scatter` (codes coloured by label), `latent/interpolation` between
    test images and, for VAEs, `latent/traversal` of the first `traversal_dims` dimensions."""

    def __init__(self, num_points: int = 2000, traversal_dims: int = 10, steps: int = 10) -> None:
        self.num_points = num_points
        self.traversal_dims = traversal_dims
        self.steps = steps

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_end: Lightning calls that after its teardown has moved the model back to
        # the CPU; here the model is still on the device it trained on.
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                log_latent_pictures(
                    logger.experiment,
                    pl_module,
                    trainer.datamodule,
                    trainer.global_step,
                    self.num_points,
                    self.traversal_dims,
                    self.steps,
                )
