"""How well a model reconstructs: the squared error per pixel of `reconstruct(x)` against x,
the same number for every family (a VAE's decoded posterior mean, a VQ-VAE's decoded codes)."""

import torch

from aelab.data import to_float
from aelab.models import AutoencoderModule


@torch.no_grad()
def reconstruction_mse(
    model: AutoencoderModule, images: torch.Tensor, batch_size: int = 1024
) -> float:
    """Mean over images and pixels of (reconstruct(x) - x)^2, images uint8 (binary ones when
    the data is binarized)."""
    model.eval()
    total = 0.0
    for batch in images.split(batch_size):
        x = to_float(batch.to(model.device))
        total += (model.reconstruct(x) - x).pow(2).sum().item()
    return total / images.numel()
