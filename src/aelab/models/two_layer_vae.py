"""VAE with two stochastic layers, the architecture of Burda, Grosse & Salakhutdinov (2016,
"Importance Weighted Autoencoders", ICLR, section 5 and appendix): z1 of 100 and z2 of 50
dimensions; the deterministic layers of their code (yburda/iwae, experiments.py, layers == 2):
q hidden units [[200, 200], [100, 100]], p [[100, 100], [200, 200]], tanh throughout.

    q(z1, z2 | x) = q(z1|x) q(z2|z1),   q(z1|x) = N(mu(x), diag sigma^2(x))  (x -> 200-200 -> z1)
                                         q(z2|z1) = N(., .)                   (z1 -> 100-100 -> z2)
    p(x, z1, z2)  = p(z2) p(z1|z2) p(x|z1),  p(z2) = N(0, I),  p(z1|z2) = N(., .)  (z2 -> 100-100)
                                             p(x|z1) = Bernoulli(sigmoid(g(z1)))  (z1 -> 200-200)
    log w_i = log p(x|z1_i) + r1_i + r2_i,   (z1_i, z2_i) ~ q
      r1_i  = log p(z1_i|z2_i) - log q(z1_i|x),   r2_i = log p(z2_i) - log q(z2_i|z1_i)
    loss    = -(1/k) sum_i log w_i(t)                (model.objective=elbo: the ELBO, k draws)
            | -log (1/k) sum_i w_i(t)                (model.objective=iw: the IWAE bound)
    log w_i(t) = log p(x|z1_i) + beta w(t) (r1_i + r2_i)

in nats per image; w(t) is the VAE's linear KL warm-up (`kl_warmup_epochs`), beta its weight, and
log w_i(1) = log w_i with beta = 1 (validation and test use w = 1). Each layer's KL is logged
from the same draws, `kl_1` = -mean r1 and `kl_2` = -mean r2 (sampled, the Monte Carlo KL of z1
against p(z1|z2) and of z2 against N(0, I)), beside `kl`, `recon` (-mean log p(x|z1)), `elbo`
and `iw_bound`: a dead z2 shows as a `kl_2` near 0. `test/nll_iw` uses the same log w. The
x <-> z1 networks are the injected `net` (its encoder features get the q(z1|x) heads, its
decoder maps z1 to logits); the z1 <-> z2 networks are this model's own (`top_hidden_dims`,
used up and, reversed, down; `top_activation`).
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aelab.errors import ConfigError
from aelab.models.gaussian import draw_normal, gaussian_log_density
from aelab.models.iwae import iw_bound
from aelab.models.vae import VAE
from aelab.nets.layers import activation, mlp

OBJECTIVES = ("elbo", "iw")


class GaussianLayer(nn.Module):
    """A conditional diagonal Gaussian: inputs -> hidden layers -> (mu, log sigma^2)."""

    def __init__(self, inputs: int, hidden: Sequence[int], outputs: int, activation: str) -> None:
        super().__init__()
        sizes = [inputs, *hidden]
        self.hidden = mlp(sizes, activation, last_activation=True)
        self.mu = nn.Linear(sizes[-1], outputs)
        self.logvar = nn.Linear(sizes[-1], outputs)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(h)
        return self.mu(h), self.logvar(h)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + sigma * eps, one draw of eps ~ N(0, I) (or `samples` of them, along a new
    leading dimension), and log N(z; mu, sigma^2)."""
    shape = mu.shape if samples is None else (samples, *mu.shape)
    eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, gaussian_log_density(z, mu, logvar)


class TwoLayerVAE(VAE):
    """`latent_dim` is z1 (the code of reconstructions and latent plots); `top_latent_dim`
    is z2."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 100,
        top_latent_dim: int = 50,
        top_hidden_dims: Sequence[int] = (100, 100),
        top_activation: str = "tanh",
        objective: str = "elbo",
        k: int = 1,
        **vae: Any,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"model.objective={objective!r} is unknown; allowed: {OBJECTIVES}")
        if k < 1 or top_latent_dim < 1:
            raise ConfigError(
                f"model.k={k} and model.top_latent_dim={top_latent_dim} must be integers >= 1"
            )
        if not all(h > 0 for h in top_hidden_dims):
            raise ConfigError(f"model.top_hidden_dims={list(top_hidden_dims)}: sizes must be > 0")
        activation(top_activation, "model.top_activation")  # the error names this key
        super().__init__(image_shape, latent_dim, **vae)
        self.objective = objective
        self.k = k
        self.top_latent_dim = top_latent_dim
        self.up = GaussianLayer(latent_dim, top_hidden_dims, top_latent_dim, top_activation)
        self.down = GaussianLayer(
            top_latent_dim, list(reversed(top_hidden_dims)), latent_dim, top_activation
        )

    def weight_terms(
        self, x: torch.Tensor, samples: int, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """log p(x|z1), and r1 = log p(z1|z2) - log q(z1|x) and r2 = log p(z2) - log q(z2|z1) for
        `samples` draws (z1, z2) ~ q per image: the parts of log w (the VAE's
        `log_importance_weights` adds them), each (samples, batch)."""
        mu1, logvar1 = self.posterior(x)
        z1, log_q1 = reparameterize(mu1, logvar1, samples)
        z2, log_q2 = reparameterize(*self.up(z1))
        logits = self.net.decoder(z1.flatten(0, 1)).unflatten(0, z1.shape[:2])
        log_px = self.log_likelihood(logits, x if target is None else target)
        log_ratio_1 = gaussian_log_density(z1, *self.down(z2)) - log_q1
        return log_px, (log_ratio_1, self.log_prior(z2) - log_q2)

    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The mean of q(z1|x) and the mean of q(z2|z1) at z1's mean (no draw), for counting
        active units; Burda et al.'s code takes z2's at one draw of z1."""
        mu1 = self.posterior(x)[0]
        return [mu1, self.up(mu1)[0]]

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode ancestral draws z2 ~ N(0, I), z1 ~ p(z1|z2) (`z` an int: that many; a tensor
        of z1 codes is decoded as it is)."""
        if isinstance(z, torch.Tensor):
            return self.decode(z)
        z2 = draw_normal((z, self.top_latent_dim), generator).to(self.device)
        eps = draw_normal((z, self.latent_dim), generator).to(self.device)
        mu1, logvar1 = self.down(z2)
        return self.decode(mu1 + torch.exp(0.5 * logvar1) * eps)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        log_px, (log_ratio_1, log_ratio_2) = self.weight_terms(x, self.k, target)  # (k, batch)
        log_ratio = log_ratio_1 + log_ratio_2
        log_w, tempered = log_px + log_ratio, log_px + self.kl_weight() * log_ratio
        elbo, bound = log_w.mean(), iw_bound(log_w).mean()
        loss = -(tempered.mean() if self.objective == "elbo" else iw_bound(tempered).mean())
        kl_1, kl_2 = -log_ratio_1.mean(), -log_ratio_2.mean()
        return {
            "loss": loss,
            "elbo": elbo,
            "iw_bound": bound,
            "recon": -log_px.mean(),
            "kl": kl_1 + kl_2,
            "kl_1": kl_1,
            "kl_2": kl_2,
        }
