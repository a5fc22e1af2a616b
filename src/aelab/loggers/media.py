"""Images and figures for every logger that shows them, by its `add_image` and `add_figure`
(`aelab.loggers.runs` on the dispatch): aelab's TensorBoard (`SummaryWriter.add_image`), MLflow
(`MlflowClient.log_image`: a keyed image with a step, shown under the run's Artifacts) and W&B
(`WandbLogger.log_image`) loggers. CSV shows none.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger


def takes_images(logger: Logger) -> bool:
    """Whether `logger` shows images."""
    return hasattr(logger, "add_image")


def log_image(loggers: Iterable[Logger], tag: str, image: torch.Tensor, step: int) -> None:
    """Log a (C, H, W) image with values in [0, 1] under `tag` to every logger that shows
    images."""
    for logger in loggers:
        if takes_images(logger):
            logger.add_image(tag, image, step)  # type: ignore[attr-defined]


def log_figure(loggers: Iterable[Logger], tag: str, figure: Any, step: int) -> None:
    """Log a matplotlib figure under `tag` to every logger that shows images."""
    for logger in loggers:
        if takes_images(logger):
            logger.add_figure(tag, figure, step)  # type: ignore[attr-defined]


class ArrayImages(ABC):
    """`add_image` and `add_figure` for a logger that takes pictures as (H, W, 3) uint8 arrays
    (MLflow, W&B), through its `log_array`."""

    @abstractmethod
    def log_array(self, tag: str, array: np.ndarray, step: int) -> None:
        """Log one (H, W, 3) uint8 picture under `tag`."""

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.log_array(tag, to_array(image), step)

    def add_figure(self, tag: str, figure: Any, step: int) -> None:
        self.log_array(tag, figure_array(figure), step)


def to_array(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) image with values in [0, 1] as the (H, W, 3) uint8 array MLflow and W&B take."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def figure_array(figure: Any) -> np.ndarray:
    """A matplotlib figure drawn into an (H, W, 3) uint8 array (as TensorBoard's add_figure
    draws it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
