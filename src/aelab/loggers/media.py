"""Images and figures for every logger that shows them: TensorBoard, MLflow and W&B (CSV shows
none), each through its public API: `SummaryWriter.add_image`, `MlflowClient.log_image` (a keyed
image with a step, shown under the run's Model metrics / Artifacts) and `WandbLogger.log_image`.
"""

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

IMAGE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)


def takes_images(logger: Logger) -> bool:
    """Whether `logger` shows images."""
    return isinstance(logger, IMAGE_LOGGERS)


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


def log_image(loggers: Iterable[Logger], tag: str, image: torch.Tensor, step: int) -> None:
    """Log a (C, H, W) image with values in [0, 1] under `tag` to every logger that shows
    images."""
    array = None
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step)
            continue
        if not takes_images(logger):
            continue
        array = to_array(image) if array is None else array
        _log_array(logger, tag, array, step)


def log_figure(loggers: Iterable[Logger], tag: str, figure: Any, step: int) -> None:
    """Log a matplotlib figure under `tag` to every logger that shows images."""
    array = None
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, step, close=False)
            continue
        if not takes_images(logger):
            continue
        array = figure_array(figure) if array is None else array
        _log_array(logger, tag, array, step)


def _log_array(logger: Logger, tag: str, array: np.ndarray, step: int) -> None:
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, array, key=tag, step=step)
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=tag, images=[array], step=step)
