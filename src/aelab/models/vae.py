"""Variational autoencoder (Kingma & Welling, 2014) with a Bernoulli decoder.

    q(z|x) = N(mu(x), diag sigma^2(x)),   p(z) = N(0, I),   p(x|z) = Bernoulli(sigmoid(g(z)))
    loss   = -ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z)),   in nats per image

The reconstruction term is binary cross-entropy summed over pixels and the KL term is analytic,
exactly as in pytorch/examples, so the numbers are comparable.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aelab.models.base import AutoencoderModule, OptimizerFactory
from aelab.models.mlp import mlp


class GaussianEncoder(nn.Module):
    """x -> (mu, log sigma^2) of a diagonal Gaussian over the latent code."""

    def __init__(self, sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        *body, latent_dim = sizes
        hidden = mlp(body, activation, activation if len(body) > 1 else None, "model.activation")
        self.body = nn.Sequential(nn.Flatten(), hidden)
        self.mu = nn.Linear(body[-1], latent_dim)
        self.logvar = nn.Linear(body[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class VAE(AutoencoderModule):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
        optimizer: OptimizerFactory | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, compile)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.latent_dim = latent_dim
        sizes = [math.prod(image_shape), *hidden_dims, latent_dim]
        self.encoder = GaussianEncoder(sizes, activation)
        self.decoder_logits = nn.Sequential(
            mlp(sizes[::-1], activation), nn.Unflatten(1, tuple(image_shape))
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: the code used for reconstructions and latent plots."""
        return self.encoder(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities, the mean of p(x|z)."""
        return torch.sigmoid(self.decoder_logits(z))

    def sample(self, z: torch.Tensor | int) -> torch.Tensor:
        """Decode prior draws z ~ N(0, I) (or that many fresh ones)."""
        if isinstance(z, int):
            z = torch.randn(z, self.latent_dim, device=self.device)
        return self.decode(z)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.decoder_logits(z)
        batch = x.shape[0]
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
        return {"loss": recon + kl, "recon": recon, "kl": kl}
