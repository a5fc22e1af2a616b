"""Variational autoencoder (Kingma & Welling, 2014); beta-VAE (Higgins et al., 2017).

    q(z|x) = N(mu(x), diag sigma^2(x)),   p(z) = N(0, I)
    p(x|z) = Bernoulli(sigmoid(g(z)))            model.likelihood=bernoulli (default)
           | N(sigmoid(g(z)), s^2 I)             model.likelihood=gaussian, s fixed or learned
           | DLogistic(sigmoid(g(z)), s_c)       model.likelihood=logistic, s_c learned per channel
    loss   = E_q[-log p(x|z)] + beta * w(t) * KL(q(z|x) || p(z)),   in nats per image

p(x|z)'s log-likelihoods and bits per dimension (of the logistic, over 8-bit images) are
in aelab.models.likelihoods.

With beta = 1 and no warm-up the loss is -ELBO; the reconstruction term with a Bernoulli decoder
is binary cross-entropy summed over pixels and the KL term is analytic, exactly as in
pytorch/examples, so the numbers are comparable. w(t) rises linearly from 0 to 1 over
`kl_warmup_epochs` epochs of training; validation and test always use w = 1.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aelab.errors import ConfigError
from aelab.models.base import AutoencoderModule
from aelab.models.gaussian import draw_normal
from aelab.models.likelihoods import DISCRETE, bits_per_dim, check_likelihood, log_likelihood


class VAE(AutoencoderModule):
    """h = net.encoder(x), (mu, log sigma^2) = linear heads of h; logits = net.decoder(z)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 20,
        likelihood: str = "bernoulli",
        gaussian_std: float | None = None,
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        **shared: Any,
    ) -> None:
        super().__init__(image_shape, latent_dim, **shared)
        check_likelihood(likelihood, gaussian_std)
        if beta < 0 or kl_warmup_epochs < 0:
            raise ConfigError(
                f"model.beta={beta} and model.kl_warmup_epochs={kl_warmup_epochs} must be >= 0"
            )
        self.likelihood = likelihood
        self.dims = math.prod(image_shape)
        self.beta = beta
        self.kl_warmup_epochs = kl_warmup_epochs
        self.mu = nn.Linear(self.net.features, latent_dim)
        self.logvar = nn.Linear(self.net.features, latent_dim)
        # log s of the Gaussian decoder: a learned scalar, or a fixed buffer
        log_std = torch.tensor(math.log(gaussian_std if gaussian_std is not None else 0.1))
        if likelihood == "gaussian" and gaussian_std is None:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std, persistent=False)  # follows the config
        if likelihood == "logistic":
            # log s_c per channel, starting from s = 0.05 (a standard deviation of about 0.09)
            self.log_scale = nn.Parameter(torch.full((image_shape[0], 1, 1), math.log(0.05)))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z|x)."""
        h = self.net.encoder(x)
        return self.mu(h), self.logvar(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: the code used for reconstructions and latent plots."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z): pixel probabilities, or the Gaussian's mean."""
        return torch.sigmoid(self.net.decoder(z))

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode prior draws z ~ N(0, I) (or that many fresh ones, from `generator` if given:
        the image grids show the same draws every epoch)."""
        if isinstance(z, int):
            z = draw_normal((z, self.latent_dim), generator).to(self.device)
        return self.decode(z)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of codes (..., D), summed over D: the standard normal here; VampPrior's is
        a mixture."""
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def log_likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) of each image, in nats (summed over its pixels), of logits (..., C, H, W)
        against images x that broadcast to them."""
        scale = self.log_scale if self.likelihood == "logistic" else self.log_std
        return log_likelihood(self.likelihood, logits, x, scale)

    def log_importance_weights(
        self, x: torch.Tensor, samples: int, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x), k = 1..samples,
        shape (samples, batch): the terms of the importance-weighted bound (Burda et al., 2016),
        whose logsumexp minus log K estimates log p(x) (`aelab.evaluation.likelihood`).
        `target`: the images scored by p(.|z_k) when they differ from the input (denoising)."""
        log_px, log_ratios = self.weight_terms(x, samples, target)
        return log_px + sum(log_ratios)

    def weight_terms(
        self, x: torch.Tensor, samples: int, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The parts of log w_k, each (samples, batch): log p(x|z_k), and per stochastic layer
        log p(z) - log q(z|.) (here one: log p(z_k) - log q(z_k|x)), which a warm-up weighs
        apart and whose means are the layers' sampled KLs."""
        mu, logvar = self.posterior(x)
        eps = torch.randn(samples, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, D)
        logits = self.net.decoder(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum(-1)
        log_px = self.log_likelihood(logits, x if target is None else target)
        return log_px, (self.log_prior(z) - log_q,)

    def neg_log_likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over pixels and the batch, in nats."""
        return -self.log_likelihood(logits, x).sum()

    def kl_weight(self) -> float:
        """beta * w(t): w rises linearly over `kl_warmup_epochs` of training, 1 otherwise."""
        if not self.training or self.kl_warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, self.epoch_progress / self.kl_warmup_epochs)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        batch = x.shape[0]
        recon = self.neg_log_likelihood(self.net.decoder(z), target) / batch
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
        terms = {"loss": recon + self.kl_weight() * kl, "recon": recon, "kl": kl}
        if self.likelihood in DISCRETE:
            terms["bpd"] = bits_per_dim(recon + kl, self.dims)  # of -ELBO, whatever beta
        return terms
