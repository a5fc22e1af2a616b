"""Importance weighted autoencoder (Burda, Grosse & Salakhutdinov, 2016, "Importance Weighted
Autoencoders", ICLR).

The VAE's networks, trained on the k-sample importance-weighted bound instead of the ELBO:

    w_i  = p(x|z_i) p(z_i) / q(z_i|x),   z_1..z_k ~ q(z|x) independently
    L_k  = log (1/k) sum_i w_i  <=  log p(x)                     (eq. 8 of the paper)
    loss = -L_k,  in nats per image

L_1 is the ELBO estimated with one sample (the VAE, with its KL sampled rather than analytic),
and L_k rises with k towards log p(x) (Theorem 1). Each step also logs `elbo`, the mean of the
same k values log w_i: the ELBO estimated from the same draws, which lies below `iw_bound`, and
its two parts, `recon` (the mean of -log p(x|z_i)) and `kl` (of log q(z_i|x) - log p(z_i): the
sampled KL, near 0 when the code is unused).

KL warm-up (`kl_warmup_epochs`): the bound has no KL term of its own, so the weight w(t) of the
VAE's warm-up tempers the prior-to-posterior ratio inside each weight,

    log w_i(t) = log p(x|z_i) + w(t) (log p(z_i) - log q(z_i|x)),   loss = -log (1/k) sum_i w_i(t)

which at k = 1 is the VAE's warm-up with its KL sampled and at w = 1 is L_k; `iw_bound` and
`elbo` are logged at w = 1, and validation and test use w = 1.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch

from aelab.errors import ConfigError
from aelab.models.vae import VAE


def iw_bound(log_w: torch.Tensor) -> torch.Tensor:
    """L_k of each image from its log weights (k, batch): log of the mean of the w_i, computed
    as logsumexp - log k so that weights of e^-500 do not underflow."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


class IWAE(VAE):
    """The VAE's Gaussian encoder and decoder; `k` samples per image in every step."""

    fixed = ("beta",)  # the VAE's: a bound has no beta

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 50,
        k: int = 5,
        **vae: Any,
    ) -> None:
        if k < 1:
            raise ConfigError(f"model.k={k} must be an integer >= 1 (samples per image)")
        super().__init__(image_shape, latent_dim, beta=1.0, **vae)
        self.k = k

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        log_px, (log_ratio,) = self.weight_terms(x, self.k, target)  # (k, batch) each
        log_w = log_px + log_ratio
        bound = iw_bound(log_w).mean()
        loss = -iw_bound(log_px + self.kl_weight() * log_ratio).mean()
        recon, kl = -log_px.mean(), -log_ratio.mean()
        return {"loss": loss, "iw_bound": bound, "elbo": log_w.mean(), "recon": recon, "kl": kl}
