"""Latent traversals labelled by factor: one row per latent dimension, the most used first
(ordered by KL, aelab.evaluation.ground_truth.latent_spread), each row labelled with the factor
it is most informative about (the argmax of the normalised mutual-information matrix behind
MIG) and its KL; and that matrix as a heat map. For TensorBoard (callbacks.disentanglement) and
`aelab.generate`'s traversals.png."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from aelab.evaluation.ground_truth import latent_spread
from aelab.models import AutoencoderModule

PADDING = 2  # make_grid's, between and around the images


@dataclass(frozen=True)
class TraversalRow:
    """A row of the traversal: the latent dimension it sweeps and the label drawn beside it."""

    dim: int
    label: str


def traversal_rows(
    spread: np.ndarray,
    information: np.ndarray | None,
    factor_names: Sequence[str],
    measure: str = "KL",
    max_rows: int | None = None,
) -> list[TraversalRow]:
    """The dimensions by decreasing `spread` (ties: the lower dimension first), at most
    `max_rows`, each labelled "z<d>  <factor> <nmi>  <measure> <spread>": the factor whose
    normalised mutual information with the dimension (`information`, (D, F)) is highest;
    without `information` (data without factors) the dimension and its spread alone."""
    order = np.argsort(-np.asarray(spread), kind="stable")[:max_rows]
    rows = []
    for dim in order.tolist():
        factor = ""
        if information is not None:
            best = int(np.argmax(information[dim]))
            factor = f"  {factor_names[best]} {information[dim, best]:.2f}"
        rows.append(TraversalRow(dim, f"z{dim}{factor}  {measure} {spread[dim]:.2f}"))
    return rows


@torch.no_grad()
def traverse(
    model: AutoencoderModule, base: torch.Tensor, dims: Sequence[int], values: torch.Tensor
) -> torch.Tensor:
    """Row r decodes the code `base` (D,) with dimension dims[r] set to each of its `values`
    (D, steps) in turn: (len(dims) * steps, C, H, W) images, row by row."""
    z = base.repeat(len(dims), values.shape[1], 1)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values[dim]
    return model.decode(z.flatten(0, 1))


def sweep_values(codes: torch.Tensor, measure: str, span: float, steps: int) -> torch.Tensor:
    """(D, steps) values each dimension is swept over: [-span, span] in the prior's units for a
    Gaussian posterior ("KL"); the codes' mean plus [-span, span] of their standard deviation
    otherwise (an autoencoder's codes have no prior scale)."""
    unit = torch.linspace(-span, span, steps, device=codes.device)
    if measure == "KL":
        return unit.expand(codes.shape[1], steps)
    std = codes.std(0) if len(codes) > 1 else torch.ones_like(codes[0])
    return codes.mean(0)[:, None] + std[:, None] * unit


@torch.no_grad()
def factor_traversal(
    model: AutoencoderModule,
    x: torch.Tensor,
    information: np.ndarray | None,
    factor_names: Sequence[str],
    steps: int = 10,
    span: float = 3.0,
    max_rows: int | None = 20,
) -> tuple[torch.Tensor, list[TraversalRow]]:
    """The labelled traversal (3, H, W) in [0, 1] of the float images `x` (on the model's
    device): rows ordered by the dimensions' spread on `x`, swept from the code of x[0]."""
    spread, measure = latent_spread(model, x)
    rows = traversal_rows(spread, information, factor_names, measure, max_rows)
    codes = model.encode(x).flatten(1)
    values = sweep_values(codes, measure, span, steps)
    images = traverse(model, codes[0], [row.dim for row in rows], values)
    return labelled_grid(images, [row.label for row in rows], steps), rows


def labelled_grid(images: torch.Tensor, labels: Sequence[str], steps: int) -> torch.Tensor:
    """make_grid's grid of `images` (`steps` a row, one row per label) with each label written
    to the left of its row: (3, H, W) floats in [0, 1]."""
    grid = make_grid(images.float().cpu().clamp(0, 1), nrow=steps, padding=PADDING, pad_value=1)
    picture = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(picture)
    margin = int(max((draw.textlength(label, font=font) for label in labels), default=0)) + 8
    canvas = Image.new("RGB", (margin + picture.width, picture.height), "white")
    canvas.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = images.shape[-2] + PADDING
    for row, label in enumerate(labels):
        middle = PADDING + row * row_height + images.shape[-2] / 2
        draw.text((4, middle), label, fill="black", font=font, anchor="lm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def information_figure(
    information: np.ndarray, factor_names: Sequence[str], rows: Sequence[TraversalRow]
):
    """The normalised mutual information (D, F) as a heat map: a line per dimension in the
    traversal's order (`rows`), a column per factor, each cell's value written in it."""
    from matplotlib.figure import Figure

    dims = [row.dim for row in rows]
    shown = information[dims]
    figure = Figure(figsize=(1.2 + 0.9 * len(factor_names), 1.0 + 0.4 * len(dims)), dpi=100)
    axes = figure.add_subplot()
    image = axes.imshow(shown, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(factor_names)), factor_names)
    axes.set_yticks(range(len(dims)), [f"z{d}" for d in dims])
    for (i, j), value in np.ndenumerate(shown):
        colour = "black" if value > 0.5 else "white"
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8)
    axes.set_title("normalised mutual information")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure
