"""Wasserstein autoencoder with the MMD penalty, WAE-MMD (Tolstikhin, Bousquet, Gelly &
Schoelkopf, 2018, "Wasserstein Auto-Encoders", ICLR, Algorithm 2).

A deterministic encoder z = f(x) and decoder x_hat = g(z); the codes of a batch are pulled
towards the prior p(z) = N(0, I) by the maximum mean discrepancy against as many prior draws:

    loss = (alpha/n) sum_i ||x_i - g(f(x_i))||^2 + lambda * MMD_k({f(x_i)}, {z~_j}),  z~_j ~ p(z)
    MMD_k(z, z~) = sum_{i!=j} [k(z_i, z_j) + k(z~_i, z~_j)] / (n(n-1))
                   - 2/n^2 sum_{i,j} k(z_i, z~_j)
    k(a, b) = sum_s s C / (s C + ||a - b||^2),   C = 2 d sigma_z^2 = 2 d   (inverse multiquadratic)

lambda is `model.mmd_weight` (10 and d = 8 on MNIST in the paper); the reconstruction cost is
the squared error summed over pixels, per image (logged as `recon`, without alpha), weighted by
alpha = `model.cost_scale`; s runs over `model.kernel_scales`. The paper's Algorithm 2 has
alpha = 1 and one scale, s = 1 (the defaults); the authors' code (tolstikhin/wae, wae.py) has
alpha = 0.05 and s in {.1, .2, .5, 1, 2, 5, 10}, so its lambda = 10 is lambda = 200 against
alpha = 1. A sum of kernels is a kernel and the MMD is linear in the kernel, so the sum over
scales is the authors' sum of per-scale MMDs. MMD_k above is the paper's unbiased estimator;
`mmd(..., biased=True)` is the V-statistic (diagonal terms kept, 1/n^2 throughout), which is
exactly 0 for two identical sets, and is used for a batch of a single image, which has no
unbiased estimate. Samples decode prior draws.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aelab.errors import ConfigError
from aelab.models.base import AutoencoderModule
from aelab.models.gaussian import draw_normal


def imq_kernel(a: torch.Tensor, b: torch.Tensor, scale: float | Sequence[float]) -> torch.Tensor:
    """k(a_i, b_j) = sum_C C / (C + ||a_i - b_j||^2) over the scales C (one, or several) for
    every pair of rows: (n, m)."""
    scales = [scale] if isinstance(scale, int | float) else scale
    distances = torch.cdist(a, b).pow(2)
    return torch.stack([c / (c + distances) for c in scales]).sum(0)


def mmd(
    a: torch.Tensor, b: torch.Tensor, scale: float | Sequence[float], biased: bool = False
) -> torch.Tensor:
    """MMD^2 between sample sets a (n, d) and b (m, d) under the IMQ kernel of `scale` (a list:
    the sum of the kernels of each): the unbiased U-statistic (the diagonals k(a_i, a_i) left
    out of the within-set means), or the biased V-statistic."""
    n, m = a.shape[0], b.shape[0]
    k_aa, k_bb, k_ab = imq_kernel(a, a, scale), imq_kernel(b, b, scale), imq_kernel(a, b, scale)
    if biased:
        return k_aa.mean() + k_bb.mean() - 2 * k_ab.mean()
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples in each set")
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return within_a + within_b - 2 * k_ab.mean()


class WAE(AutoencoderModule):
    """h = net.encoder(x), z = W h + b (deterministic); x_hat = sigmoid(net.decoder(z))."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 8,
        mmd_weight: float = 10.0,
        cost_scale: float = 1.0,
        kernel_scales: Sequence[float] = (1.0,),
        **shared: Any,
    ) -> None:
        for key, value in {"mmd_weight": mmd_weight, "cost_scale": cost_scale}.items():
            if not 0 <= value < math.inf:
                raise ConfigError(f"model.{key}={value} must be a finite number >= 0")
        if not kernel_scales or not all(0 < s < math.inf for s in kernel_scales):
            raise ConfigError(
                f"model.kernel_scales={list(kernel_scales)} must be a non-empty list of finite "
                "numbers > 0 (multiples of C = 2 latent_dim)"
            )
        super().__init__(image_shape, latent_dim, **shared)
        self.mmd_weight = mmd_weight
        self.cost_scale = cost_scale
        # C = 2 d sigma_z^2 (sigma_z = 1) times each scale
        self.kernel_scale = [2.0 * latent_dim * s for s in kernel_scales]
        self.to_code = nn.Linear(self.net.features, latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.net.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net.decoder(z))

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode prior draws z ~ N(0, I) (or that many fresh ones, from `generator`)."""
        if isinstance(z, int):
            z = draw_normal((z, self.latent_dim), generator).to(self.device)
        return self.decode(z)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        recon = (self.decode(z) - target).pow(2).sum() / x.shape[0]
        # a batch of one image (the last of a set, at worst) has no unbiased estimate
        discrepancy = mmd(z, torch.randn_like(z), self.kernel_scale, biased=x.shape[0] < 2)
        loss = self.cost_scale * recon + self.mmd_weight * discrepancy
        return {"loss": loss, "recon": recon, "mmd": discrepancy}
