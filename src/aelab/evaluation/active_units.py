"""Active units (Burda, Grosse & Salakhutdinov, 2016, "Importance Weighted Autoencoders",
section 5.2): a unit u of a stochastic layer is active when

    A_u = Cov_x(E_{q(z|x)}[z_u]) > 0.01,

the variance over the images of the unit's posterior mean. A unit whose mean does not move with
x carries nothing about it (its KL is near 0): counting the active units of each layer makes a
collapsed layer visible in TensorBoard (`val/active_units`, per epoch, `aelab.callbacks
.ActiveUnits`) and in `aelab.eval` (`test/active_units`), not only in a hand analysis.

Each layer's posterior mean is the family's `posterior_means(x)` (one tensor per stochastic
layer, z1 first: the two-layer VAE and the Ladder VAE), or the mean `posterior(x)[0]` of a
Gaussian encoder (every VAE); models without a posterior (autoencoders, WAE, VQ-VAE) have none.
The variance is numpy's np.var (no Bessel correction), as the authors' code takes it.
"""

from typing import Protocol, runtime_checkable

import torch

from aelab.data import to_float
from aelab.models import AutoencoderModule

THRESHOLD = 0.01  # the paper's


@runtime_checkable
class LayeredPosterior(Protocol):
    """A model with several stochastic layers: each one's posterior mean, z1 first."""

    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]: ...


@runtime_checkable
class GaussianPosterior(Protocol):
    """A model with one Gaussian stochastic layer: (mu, log sigma^2) of q(z|x)."""

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def active_units(means: torch.Tensor, threshold: float = THRESHOLD) -> int:
    """How many units (columns of `means`, images x units) have a variance over the images above
    `threshold`."""
    return int((means.double().var(dim=0, correction=0) > threshold).sum())


def has_posterior(model: object) -> bool:
    """Whether the model has stochastic layers whose active units can be counted."""
    return isinstance(model, LayeredPosterior | GaussianPosterior)


def posterior_means(model: object, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stochastic layer's posterior mean of a batch, z1 first."""
    if isinstance(model, LayeredPosterior):
        return model.posterior_means(x)
    if isinstance(model, GaussianPosterior):
        return [model.posterior(x)[0]]
    raise TypeError(f"{type(model).__name__} has no posterior to count active units of")


@torch.no_grad()
def layer_means(
    model: AutoencoderModule, images: torch.Tensor, batch_size: int = 1024
) -> list[torch.Tensor]:
    """Each layer's posterior means of `images` (uint8), (images, units) on the CPU, in
    evaluation mode (BatchNorm's running statistics); the model's mode is restored after."""
    training = model.training
    model.eval()
    try:
        per_batch = [
            [mean.cpu() for mean in posterior_means(model, to_float(batch.to(model.device)))]
            for batch in images.split(batch_size)
        ]
    finally:
        model.train(training)
    return [torch.cat(layer) for layer in zip(*per_batch, strict=True)]


def active_unit_metrics(
    model: AutoencoderModule, images: torch.Tensor, stage: str, threshold: float = THRESHOLD
) -> dict[str, float]:
    """`<stage>/active_units` (all layers together) and, for a model of several layers,
    `<stage>/active_units_1` (z1) ... ; nothing for a model with no posterior or no images."""
    if not has_posterior(model) or len(images) == 0:
        return {}
    counts = [active_units(layer, threshold) for layer in layer_means(model, images)]
    metrics = {f"{stage}/active_units": float(sum(counts))}
    if len(counts) > 1:
        metrics |= {f"{stage}/active_units_{i}": float(n) for i, n in enumerate(counts, 1)}
    return metrics
