"""Importance weighted autoencoder (Burda, Grosse & Salakhutdinov, 2016, "Importance Weighted
Autoencoders", ICLR).

The VAE's networks, trained on the k-sample importance-weighted bound instead of the ELBO:

    w_i  = p(x|z_i) p(z_i) / q(z_i|x),   z_1..z_k ~ q(z|x) independently
    L_k  = log (1/k) sum_i w_i  <=  log p(x)                     (eq. 8 of the paper)
    loss = -L_k,  in nats per image

L_1 is the ELBO estimated with one sample (the VAE, with its KL sampled rather than analytic),
and L_k rises with k towards log p(x) (Theorem 1). Each step also logs `elbo`, the mean of the
same k values log w_i: the ELBO estimated from the same draws, which lies below `iw_bound`.
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

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 50,
        k: int = 5,
        likelihood: str = "bernoulli",
        gaussian_std: float | None = None,
        **shared: Any,
    ) -> None:
        if k < 1:
            raise ConfigError(f"model.k={k} must be an integer >= 1 (samples per image)")
        # beta and kl_warmup_epochs, the VAE's, are no arguments here (nor hyperparameters)
        super().__init__(image_shape, latent_dim, likelihood, gaussian_std, **shared)
        self.k = k

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        log_w = self.log_importance_weights(x, self.k, target)  # (k, batch)
        bound = iw_bound(log_w).mean()
        return {"loss": -bound, "iw_bound": bound, "elbo": log_w.mean()}
