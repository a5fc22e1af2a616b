"""VAE with a VampPrior (Tomczak & Welling, 2018, "VAE with a VampPrior", AISTATS).

The prior is the mixture of the variational posteriors of K learned pseudo-inputs u_1..u_K:

    p(z)   = (1/K) sum_k q(z|u_k)                                  (eq. 9 of the paper)
    loss   = E_q[-log p(x|z)] + beta * w(t) * E_q[log q(z|x) - log p(z)],   in nats per image

The KL term has no closed form against a mixture, so it is estimated with the same draw
z ~ q(z|x) as the reconstruction (the paper's single-sample estimate). The pseudo-inputs are
images: u = hardtanh(P, 0, 1) of a learned P initialised N(0.05, 0.01) per pixel, as in the
authors' code for MNIST. Samples come from that prior: pick u_k uniformly, draw z ~ q(z|u_k),
decode. `test/nll_iw` uses the same mixture as log p(z) (`log_prior`).

`logvar_clamp` [lo, hi] clips the encoder's log sigma^2 to [lo, hi] (hardtanh, whose gradient
is 0 outside), for the data's posteriors and the pseudo-inputs' alike: the authors' code
(jmtomczak/vae_vampprior, models/VAE.py) has Hardtanh(-6, 2) on that head; null leaves it
unclipped. Their KL warm-up (100 epochs by default) is the VAE's `kl_warmup_epochs`.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aelab.errors import ConfigError
from aelab.models.gaussian import draw_normal, gaussian_log_density
from aelab.models.vae import VAE

PSEUDO_INPUT_MEAN = 0.05  # the authors' initialisation of the pseudo-inputs for MNIST
PSEUDO_INPUT_STD = 0.01
LOG_2PI = math.log(2 * math.pi)


def diagonal_gaussians_log_density(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """log N(z; mu_k, diag exp(logvar_k)) of codes z (..., D) under each of K Gaussians (K, D),
    shape (..., K). The square expanded, sum_d (z_d^2 - 2 z_d mu_kd + mu_kd^2) / var_kd, is two
    matrix products instead of a (..., K, D) tensor of differences: the importance-weighted
    likelihood draws thousands of codes per image. In float64, where the expanded terms
    cancel (a small variance)."""
    precision = torch.exp(-logvar).double()  # (K, D)
    mu64, z64 = mu.double(), z.double()
    constant = (mu64.pow(2) * precision + logvar.double()).sum(-1) + z.shape[-1] * LOG_2PI
    square = z64.pow(2) @ precision.T - 2 * z64 @ (mu64 * precision).T + constant
    return (-0.5 * square).to(z.dtype)


class VampPriorVAE(VAE):
    """The VAE's Gaussian encoder and decoder, with the prior a mixture over pseudo-inputs."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 20,
        num_pseudo_inputs: int = 500,
        logvar_clamp: Sequence[float] | None = None,
        **vae: Any,
    ) -> None:
        if num_pseudo_inputs < 1:
            raise ConfigError(f"model.num_pseudo_inputs={num_pseudo_inputs} must be >= 1")
        if logvar_clamp is not None and not (
            len(logvar_clamp) == 2 and -math.inf < logvar_clamp[0] < logvar_clamp[1] < math.inf
        ):
            raise ConfigError(
                f"model.logvar_clamp={list(logvar_clamp)} must be null or [lo, hi], two finite "
                "numbers with lo < hi (the authors': [-6, 2])"
            )
        super().__init__(image_shape, latent_dim, **vae)
        self.logvar_clamp = None if logvar_clamp is None else (logvar_clamp[0], logvar_clamp[1])
        self.pseudo_inputs = nn.Parameter(
            torch.randn(num_pseudo_inputs, *image_shape) * PSEUDO_INPUT_STD + PSEUDO_INPUT_MEAN
        )

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z|x), log sigma^2 clipped to `logvar_clamp` if set."""
        mu, logvar = super().posterior(x)
        if self.logvar_clamp is not None:
            low, high = self.logvar_clamp
            logvar = F.hardtanh(logvar, low, high)
        return mu, logvar

    def pseudo_images(self) -> torch.Tensor:
        """u_1..u_K, clipped to the pixel range [0, 1] (the paper's hardtanh)."""
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z|u_k) - log K, for codes (..., D)."""
        mu, logvar = self.posterior(self.pseudo_images())  # (K, D) each
        per_component = diagonal_gaussians_log_density(z, mu, logvar)  # (..., K)
        return torch.logsumexp(per_component, dim=-1) - math.log(mu.shape[0])

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode draws from the mixture prior (`z` an int: that many; a tensor of codes is
        decoded as it is)."""
        if isinstance(z, int):
            mu, logvar = self.posterior(self.pseudo_images())
            device = generator.device if generator is not None else None
            pick = torch.randint(mu.shape[0], (z,), generator=generator, device=device)
            eps = draw_normal((z, self.latent_dim), generator).to(self.device)
            pick = pick.to(self.device)
            z = mu[pick] + torch.exp(0.5 * logvar[pick]) * eps
        return self.decode(z)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        batch = x.shape[0]
        recon = self.neg_log_likelihood(self.net.decoder(z), target) / batch
        kl = (gaussian_log_density(z, mu, logvar) - self.log_prior(z)).sum() / batch
        return {"loss": recon + self.kl_weight() * kl, "recon": recon, "kl": kl}
