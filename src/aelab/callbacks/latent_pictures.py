"""The latent space, at the end of training, in every logger that shows images."""

import lightning as L

from aelab.evaluation.pictures import log_latent_pictures
from aelab.loggers.media import takes_images


class LatentPictures(L.Callback):
    """When training ends, log `latent/scatter` (`num_points` test codes coloured by label),
    `latent/interpolation` between test images and, for VAEs, `latent/traversal` of the first
    `traversal_dims` dimensions to every logger that shows images (TensorBoard, MLflow, W&B);
    TensorBoard also gets the codes in its embedding projector (labels and image sprites)."""

    def __init__(self, num_points: int = 2000, traversal_dims: int = 10, steps: int = 10) -> None:
        self.num_points = num_points
        self.traversal_dims = traversal_dims
        self.steps = steps

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_end: Lightning calls that after its teardown has moved the model back to
        # the CPU; here the model is still on the device it trained on.
        loggers = [lg for lg in trainer.loggers if takes_images(lg)]
        if not trainer.is_global_zero or not loggers:
            return
        log_latent_pictures(
            loggers,
            pl_module,  # type: ignore[arg-type]  # the callback serves aelab's models only
            trainer.datamodule,  # type: ignore[attr-defined]  # set by fit(datamodule=...)
            trainer.global_step,
            self.num_points,
            self.traversal_dims,
            self.steps,
        )
