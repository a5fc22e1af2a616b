"""The standard normal draws and diagonal Gaussian log densities of the latent codes, shared by
the VAE, the WAE's prior samples and the hierarchical models (two-layer, Ladder, VampPrior)."""

import math
from collections.abc import Sequence

import torch


def draw_normal(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws on the generator's device (the CPU without one)."""
    device = generator.device if generator is not None else None
    return torch.randn(*shape, generator=generator, device=device)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension (all three broadcast)."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)
