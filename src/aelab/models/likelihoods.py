"""The VAE's decoders p(x|z) as log-likelihoods of images, and bits per dimension.

The discretized logistic (Salimans et al., 2017, PixelCNN++; Kingma et al., 2016) gives each
8-bit value x = k/255 the logistic's mass on its bin [x - 1/510, x + 1/510], the edge bins
reaching to -inf and +inf: a probability of the 8-bit image itself, so the VAE also reports
bits per dimension, bpd = -ELBO / (D ln 2) with D = C * H * W (`train/bpd`, `val/bpd`, `test/bpd`),
an upper bound comparable with the CIFAR-10 bits/dim of the papers. The Bernoulli and the
continuous Gaussian decoders are not distributions over 8-bit images and report none.
"""

import math
from typing import TypeVar

import torch
import torch.nn.functional as F

from aelab.errors import ConfigError

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
DISCRETE = ("logistic",)  # likelihoods of 8-bit images: bits per dimension mean something
BINS = 255  # 8-bit pixels: x in {0, 1/255, ..., 1}


T = TypeVar("T", torch.Tensor, float)


def check_likelihood(likelihood: str, gaussian_std: float | None) -> None:
    """One line naming the key when the likelihood is unknown or its fixed std not positive."""
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"model.likelihood={likelihood!r} is unknown; allowed: {list(LIKELIHOODS)}"
        )
    if gaussian_std is not None and gaussian_std <= 0:
        raise ConfigError(f"model.gaussian_std={gaussian_std} must be > 0, or null to learn it")


def bits_per_dim(nats: T, dims: int) -> T:
    """Nats per image to bits per dimension (pixel and channel)."""
    return nats / (dims * math.log(2))


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) per pixel of 8-bit values x = k/255 under a logistic of `mean` and scale
    exp(`log_scale`) discretized into 255 bins: log(sigmoid(plus) - sigmoid(minus)) with
    plus, minus the bin's edges, computed as logsigmoid(plus) + logsigmoid(-minus) +
    log(1 - exp(minus - plus)), which stays finite where both sigmoids round to 0 or 1."""
    half = 0.5 / BINS
    inverse_scale = torch.exp(-log_scale)
    plus = (x + half - mean) * inverse_scale
    minus = (x - half - mean) * inverse_scale
    middle = F.logsigmoid(plus) + F.logsigmoid(-minus) + torch.log(-torch.expm1(minus - plus))
    lowest = F.logsigmoid(plus)  # x = 0: the mass below 0.5/255
    highest = F.logsigmoid(-minus)  # x = 1: the mass above 1 - 0.5/255
    return torch.where(x < half, lowest, torch.where(x > 1 - half, highest, middle))


def log_likelihood(
    likelihood: str,
    logits: torch.Tensor,
    x: torch.Tensor,
    log_scale: torch.Tensor,
) -> torch.Tensor:
    """log p(x|z) of each image, in nats (summed over its pixels): logits (..., C, H, W) against
    images x that broadcast to them (K samples of a batch share its images). `log_scale`: the
    Gaussian's log s, or the logistic's log s_c per channel (the Bernoulli has none)."""

    def pixels_summed(per_pixel: torch.Tensor) -> torch.Tensor:  # one flat reduction
        return per_pixel.flatten(-3).sum(-1)

    if likelihood == "bernoulli":
        # x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) = x l - softplus(l): minus the binary
        # cross-entropy, in two passes over the logits (which dominate test/nll_iw's cost)
        return pixels_summed(logits * x) - pixels_summed(F.softplus(logits))
    mean = torch.sigmoid(logits)
    if likelihood == "logistic":
        return pixels_summed(discretized_logistic_log_prob(x, mean, log_scale))
    per_pixel = 0.5 * ((x - mean) / log_scale.exp()) ** 2 + log_scale + 0.5 * math.log(2 * math.pi)
    return -pixels_summed(per_pixel)
