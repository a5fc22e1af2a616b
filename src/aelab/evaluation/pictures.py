"""Pictures of the latent space: scatter, traversal and interpolation for every logger that shows
images, and the embedding projector in TensorBoard."""

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torchvision.utils import make_grid

from aelab.data import ImageDataModule, to_float
from aelab.evaluation.probes import latent_codes
from aelab.models import AutoencoderModule

CMAP = "tab10"  # label colours (cycling past ten classes)
if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger


def interpolate(
    model: AutoencoderModule, a: torch.Tensor, b: torch.Tensor, steps: int
) -> torch.Tensor:
    """Decode `steps` evenly spaced points between the codes of images `a` and `b` (N each):
    N * steps images, row by row."""
    start, end = model.encode(a), model.encode(b)
    weights = torch.linspace(0, 1, steps, device=start.device).view(1, steps, 1)
    return model.decode(
        ((1 - weights) * start.unsqueeze(1) + weights * end.unsqueeze(1)).flatten(0, 1)
    )


def traversal(model: AutoencoderModule, dims: int, steps: int, span: float = 3.0) -> torch.Tensor:
    """Row i decodes z = 0 except z_i, swept over [-span, span]: what each dimension controls."""
    dims = min(dims, model.latent_dim)
    z = torch.zeros(dims, steps, model.latent_dim, device=model.device)
    values = torch.linspace(-span, span, steps, device=model.device)
    for i in range(dims):
        z[i, :, i] = values
    return model.decode(z.flatten(0, 1))


def scatter_figure(codes: torch.Tensor, labels: torch.Tensor, classes: list[str] | None = None):
    """Codes coloured by label, with a legend of the class names (`classes`; None: the data has
    no labels, one colour): 2-d and 3-d codes as they are (3-d in 3-d), 1-d codes against
    their label, others projected on their first two principal components."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), dpi=100)
    if codes.shape[1] == 3:
        axes = figure.add_subplot(projection="3d")
        points = axes.scatter(codes[:, 0], codes[:, 1], codes[:, 2], c=labels, cmap=CMAP, s=4)
        title = "3-d codes"
    else:
        if codes.shape[1] == 1:
            xy, title = torch.cat([codes, labels.view(-1, 1).to(codes)], 1), "1-d codes (y: label)"
        elif codes.shape[1] == 2:
            xy, title = codes, "2-d codes"
        else:
            centred = codes - codes.mean(0)
            xy, title = (
                centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T,
                "codes, PCA",
            )
        axes = figure.add_subplot()
        points = axes.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=CMAP, s=4)
    axes.set_title(title)
    if classes is not None:
        present = sorted(set(labels.tolist()))
        handles = points.legend_elements(num=present)[0] if len(present) > 1 else []
        names = [classes[label] for label in present][: len(handles)]
        axes.legend(handles, names, fontsize="small", markerscale=0.8, loc="best")
    return figure


@torch.no_grad()
def log_latent_pictures(
    loggers: "Iterable[Logger]",
    model: AutoencoderModule,
    datamodule: ImageDataModule,
    step: int,
    num_points: int = 2000,
    traversal_dims: int = 10,
    steps: int = 10,
) -> None:
    """Log the `latent/*` images to every logger that shows images, and the projector data
    (codes, labels, image sprites) to TensorBoard's."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from aelab.loggers.media import log_figure, log_image

    loggers = list(loggers)
    model.eval()
    images = datamodule.test_set.images[:num_points]
    labels = datamodule.test_set.labels[:num_points].cpu()
    classes = getattr(datamodule, "classes", None)
    codes = latent_codes(model, images)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_embedding(
                codes,
                metadata=[classes[label] for label in labels.tolist()] if classes else None,
                label_img=to_float(images.cpu()),
                global_step=step,
                tag="latent/test_codes",
            )
    log_figure(loggers, "latent/scatter", scatter_figure(codes, labels, classes), step)
    x = to_float(images[:16].to(model.device))
    grid = make_grid(
        interpolate(model, x[:8], x[8:16], steps).float().cpu(), nrow=steps, pad_value=1
    )
    log_image(loggers, "latent/interpolation", grid, step)
    if hasattr(model, "sample"):
        grid = make_grid(
            traversal(model, traversal_dims, steps).float().cpu(), nrow=steps, pad_value=1
        )
        log_image(loggers, "latent/traversal", grid, step)
