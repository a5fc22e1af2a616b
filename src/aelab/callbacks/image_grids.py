"""Image grids in every logger that shows images: what the model reconstructs and, for generative
models, samples."""

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning as L
import torch
from torchvision.utils import make_grid, save_image

from aelab.data import to_float
from aelab.loggers.media import log_image, takes_images
from aelab.models.generative import Generative

if TYPE_CHECKING:
    from aelab.models import AutoencoderModule

log = logging.getLogger(__name__)


class ImageGrids(L.Callback):
    """At the end of each validation epoch, log to every logger that shows images (TensorBoard,
    MLflow, W&B)

    - `val/reconstructions`: the same `num_images` validation images (top row) above their
      reconstructions (bottom row), so epochs can be compared image by image; for a denoising
      model three rows: the corrupted input, its reconstruction, the clean image;
    - `val/samples`: for models with a `sample(n, generator=...)` method, `num_samples` images
      decoded from draws of the model's own prior, fixed once by `seed`. Models without a
      prior to sample from (autoencoders, VQ-VAE, whose codes have no learned prior) get none:
      a grid of arbitrary codes is no sample.

    With `save_png`, each grid is also written to `<run>/images/<tag>_epoch_NNN.png`.
    """

    def __init__(
        self, num_images: int = 8, num_samples: int = 64, seed: int = 0, save_png: bool = False
    ) -> None:
        self.num_images = num_images
        self.num_samples = num_samples
        self.seed = seed
        self.save_png = save_png

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not isinstance(pl_module, Generative):
            name = type(pl_module).__name__
            log.info(f"{name} has no prior to sample from: no val/samples grid")

    def _log(self, trainer: L.Trainer, tag: str, grid: torch.Tensor) -> None:
        log_image(trainer.loggers, tag, grid, trainer.global_step)
        if self.save_png:
            folder = Path(trainer.default_root_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{tag.replace('/', '_')}_epoch_{trainer.current_epoch:03d}.png"
            save_image(grid, folder / name)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not any(takes_images(lg) for lg in trainer.loggers) and not self.save_png:
            return
        model = cast("AutoencoderModule", pl_module)  # the callback serves aelab's models
        # mypy: Lightning's Trainer.datamodule is set by fit(datamodule=...), undeclared
        images = trainer.datamodule.val_set.images[: self.num_images]  # type: ignore[attr-defined]
        x = to_float(images.to(model.device))
        if getattr(model, "noise", None):
            generator = torch.Generator(x.device).manual_seed(self.seed)
            noisy = model.corrupt(x, generator)
            rows = [noisy, model.reconstruct(noisy), x]
        else:
            rows = [x, model.reconstruct(x)]
        grid = make_grid(torch.cat(rows).float().cpu(), nrow=len(x), pad_value=1)
        self._log(trainer, "val/reconstructions", grid)
        if isinstance(model, Generative):
            # each family draws from its own prior (VampPrior's mixture, the two-layer chain)
            generator = torch.Generator().manual_seed(self.seed)
            samples = model.sample(self.num_samples, generator=generator).float().cpu()
            grid = make_grid(samples, nrow=int(self.num_samples**0.5), pad_value=1)
            self._log(trainer, "val/samples", grid)
