"""Ladder VAE (Sønderby, Raiko, Maaløe, Sønderby & Winther, 2016, "Ladder Variational
Autoencoders", NeurIPS): L stochastic layers z_1 (next to x) ... z_L, whose posterior is inferred
top-down, each layer's bottom-up estimate corrected by the generative model's own top-down
prediction.

    bottom-up  d_1 = net.encoder(x),  d_i = MLP_i(d_{i-1});  (mu^_i, sigma^_i) = heads of d_i
    generative p(z_L) = N(0, I),  p(z_i | z_{i+1}) = N(mu_p,i, sigma_p,i^2)  (heads of MLP(z_{i+1}))
               p(x | z_1) = net.decoder(z_1): Bernoulli logits (or the VAE's other likelihoods)
    inference  q(z_L | x) = N(mu^_L, sigma^_L^2)                        (bottom-up only)
               q(z_i | z_{i+1}, x) = N(mu_q,i, sigma_q,i^2), the precision-weighted merge
                 sigma_q^-2 = sigma^^-2 + sigma_p^-2
                 mu_q = (mu^ sigma^^-2 + mu_p sigma_p^-2) sigma_q^2
               with (mu_p, sigma_p) of p(z_i | z_{i+1}) at the z_{i+1} drawn from q: the top-down
               path of inference is the generative model's (shared parameters, as in the paper)
    loss     = -log p(x|z_1) + beta * w(t) * sum_i KL(q(z_i|z_{i+1}, x) || p(z_i|z_{i+1}))

in nats per image, each layer's KL analytic (both Gaussians) at the z_{i+1} drawn from q, logged
as `kl_1` ... `kl_L` beside their sum `kl` and `recon`: a dead layer shows as a KL near 0.
w(t) is the VAE's linear KL warm-up (`kl_warmup_epochs`; the paper warms up over 200 epochs).
log w = log p(x|z_1) + log p(z_L) + sum_{i<L} log p(z_i|z_{i+1}) - sum_i log q(z_i|.), with the z
drawn top-down from the merged q, gives `test/nll_iw`.

Every MLP of the ladder's own (`upper_block_layers` Linear layers of `upper_hidden_dims[i]` units
each between layers i and i+1, both directions) is Linear -> BatchNorm -> activation
(`batch_norm`); in evaluation BatchNorm uses its running statistics. The x <-> z_1 networks are
the injected `net` (its encoder features d_1 get the z_1 heads, its decoder maps z_1 to logits),
as in the two-layer VAE. The paper's MNIST model: 5 layers, hidden 512-256-128-64-32, latent
64-32-16-8-4, two leaky-ReLU layers per MLP; its means are Linear and its variances
Softplus(Linear), where this file's heads give log sigma^2 as the VAE's do.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from aelab.errors import ConfigError
from aelab.models.gaussian import draw_normal, gaussian_log_density
from aelab.models.likelihoods import DISCRETE, bits_per_dim
from aelab.models.vae import VAE
from aelab.nets.layers import activation


def precision_weighted(
    mu_hat: torch.Tensor, logvar_hat: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu_q, log sigma_q^2) of the merge of two Gaussians by their precisions. Written in
    log-variances: log sigma_q^2 = -logaddexp(-log sigma^^2, -log sigma_p^2), and mu_q weighs
    mu^ by sigma_q^2 / sigma^^2 = sigmoid(log sigma_p^2 - log sigma^^2), which neither
    overflows nor divides by zero however sure either estimate is."""
    logvar_q = -torch.logaddexp(-logvar_hat, -logvar_p)
    weight = torch.sigmoid(logvar_p - logvar_hat)
    return mu_p + weight * (mu_hat - mu_p), logvar_q


def dense_block(
    inputs: int, width: int, layers: int, activation_name: str, batch_norm: bool
) -> nn.Sequential:
    """`layers` x (Linear to `width` units, BatchNorm with `batch_norm`, activation)."""
    modules: list[nn.Module] = []
    for i in range(layers):
        modules.append(nn.Linear(inputs if i == 0 else width, width))
        if batch_norm:
            modules.append(nn.BatchNorm1d(width))
        modules.append(activation(activation_name, "model.upper_activation"))
    return nn.Sequential(*modules)


class GaussianBlock(nn.Module):
    """A deterministic block and the Gaussian heads on its output: d = block(h),
    (mu, log sigma^2) = linear heads of d."""

    def __init__(self, inputs: int, width: int, outputs: int, **block: Any) -> None:
        super().__init__()
        self.hidden = dense_block(inputs, width, **block)
        self.mu = nn.Linear(width, outputs)
        self.logvar = nn.Linear(width, outputs)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """d and (mu, log sigma^2) of a batch h of shape (batch, inputs)."""
        d = self.hidden(h)
        return d, (self.mu(d), self.logvar(d))


class Layer(NamedTuple):
    """One stochastic layer of a top-down pass: its draw z, q's and p's (mu, log sigma^2)."""

    z: torch.Tensor
    q: tuple[torch.Tensor, torch.Tensor]
    p: tuple[torch.Tensor, torch.Tensor]


class LadderVAE(VAE):
    """`latent_dim` is z_1 (the code of reconstructions and latent plots); `upper_latent_dims`
    are z_2 ... z_L and `upper_hidden_dims` the widths of the blocks below each of them."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 64,
        upper_latent_dims: Sequence[int] = (32, 16),
        upper_hidden_dims: Sequence[int] = (256, 128),
        upper_block_layers: int = 2,
        upper_activation: str = "leaky_relu",
        batch_norm: bool = True,
        **vae: Any,
    ) -> None:
        check_ladder(upper_latent_dims, upper_hidden_dims, upper_block_layers)
        activation(upper_activation, "model.upper_activation")  # the error names this key
        super().__init__(image_shape, latent_dim, **vae)
        self.latent_dims = [latent_dim, *upper_latent_dims]
        block = {
            "layers": upper_block_layers,
            "activation_name": upper_activation,
            "batch_norm": batch_norm,
        }
        below = [self.net.features, *upper_hidden_dims]  # each up block's input width
        widths = zip(below, upper_hidden_dims, upper_latent_dims, strict=False)
        self.up = nn.ModuleList(
            GaussianBlock(inputs, width, size, **block) for inputs, width, size in widths
        )
        # down[i]: p(z_{i+1} | z_{i+2}) (0-based: down[0] gives z_1's prior from z_2)
        self.down = nn.ModuleList(
            GaussianBlock(self.latent_dims[i + 1], width, self.latent_dims[i], **block)
            for i, width in enumerate(upper_hidden_dims)
        )

    def bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mu^_i, log sigma^^2_i) of every layer, z_1 first."""
        d = self.net.encoder(x)
        estimates = [(self.mu(d), self.logvar(d))]
        for block in self.up:
            d, estimate = block(d)
            estimates.append(estimate)
        return estimates

    def conditional(self, i: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of p(z_{i+1} | z_{i+2}) (0-based `i`) at codes z of shape (..., D):
        BatchNorm sees them as one flat batch."""
        mu, logvar = self.down[i](z.flatten(0, -2))[1]
        return mu.unflatten(0, z.shape[:-1]), logvar.unflatten(0, z.shape[:-1])

    def top_down(
        self,
        estimates: Sequence[tuple[torch.Tensor, torch.Tensor]],
        samples: int | None = None,
        draw: bool = True,
    ) -> list[Layer]:
        """Draw z_L, ..., z_1 from the merged q (`samples` draws per image along a new leading
        dimension; one, without it), or take each layer's mean (`draw=False`); z_1 first."""
        mu, logvar = estimates[-1]
        if samples is not None:
            mu, logvar = mu.expand(samples, *mu.shape), logvar.expand(samples, *logvar.shape)
        standard = (torch.zeros_like(mu), torch.zeros_like(logvar))  # p(z_L) = N(0, I)
        layers = [Layer(reparameterize(mu, logvar, draw), (mu, logvar), standard)]
        for i in reversed(range(len(self.down))):
            prior = self.conditional(i, layers[0].z)
            merged = precision_weighted(*estimates[i], *prior)
            layers.insert(0, Layer(reparameterize(*merged, draw), merged, prior))
        return layers

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of z_1 under q, top-down through the upper layers' means."""
        return self.top_down(self.bottom_up(x), draw=False)[0].z

    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's mean under the merged q along the mean path (every upper layer's mean in
        place of a draw), z_1 first: what active units are counted on."""
        return [layer.z for layer in self.top_down(self.bottom_up(x), draw=False)]

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode ancestral draws z_L ~ N(0, I), z_i ~ p(z_i|z_{i+1}) (`z` an int: that many,
        from `generator` if given; a tensor of z_1 codes is decoded as it is)."""
        if isinstance(z, torch.Tensor):
            return self.decode(z)
        code = draw_normal((z, self.latent_dims[-1]), generator).to(self.device)
        for i in reversed(range(len(self.down))):
            mu, logvar = self.conditional(i, code)
            eps = draw_normal((z, self.latent_dims[i]), generator).to(self.device)
            code = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(code)

    def log_importance_weights(
        self, x: torch.Tensor, samples: int, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log w = log p(x|z_1) + log p(z_L) + sum_{i<L} log p(z_i|z_{i+1}) - sum_i log q(z_i|.)
        for `samples` top-down draws per image from the merged q: shape (samples, batch)."""
        layers = self.top_down(self.bottom_up(x), samples)
        z1 = layers[0].z
        logits = self.net.decoder(z1.flatten(0, 1)).unflatten(0, z1.shape[:2])
        log_w = self.log_likelihood(logits, x if target is None else target)
        log_w = log_w + self.log_prior(layers[-1].z)
        for layer in layers[:-1]:
            log_w = log_w + gaussian_log_density(layer.z, *layer.p)
        for layer in layers:
            log_w = log_w - gaussian_log_density(layer.z, *layer.q)
        return log_w

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        layers = self.top_down(self.bottom_up(x))
        batch = x.shape[0]
        recon = self.neg_log_likelihood(self.net.decoder(layers[0].z), target) / batch
        kls = [gaussian_kl(layer.q, layer.p).sum() / batch for layer in layers]
        kl = torch.stack(kls).sum()
        terms = {"loss": recon + self.kl_weight() * kl, "recon": recon, "kl": kl}
        terms |= {f"kl_{i}": value for i, value in enumerate(kls, start=1)}
        if self.likelihood in DISCRETE:
            terms["bpd"] = bits_per_dim(recon + kl, self.dims)  # of -ELBO, whatever beta
        return terms


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, draw: bool = True) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I); mu itself with `draw=False`."""
    if not draw:
        return mu
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def gaussian_kl(
    q: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians given as (mu, log sigma^2), summed over the last
    dimension."""
    (mu_q, logvar_q), (mu_p, logvar_p) = q, p
    q_dist = Normal(mu_q, torch.exp(0.5 * logvar_q), validate_args=False)
    p_dist = Normal(mu_p, torch.exp(0.5 * logvar_p), validate_args=False)
    return kl_divergence(q_dist, p_dist).sum(-1)


def check_ladder(latent_dims: Sequence[int], hidden_dims: Sequence[int], block_layers: int) -> None:
    """One width per upper layer, every size >= 1: else one line naming the keys."""
    if len(latent_dims) != len(hidden_dims):
        raise ConfigError(
            f"model.upper_latent_dims={list(latent_dims)} and model.upper_hidden_dims="
            f"{list(hidden_dims)} must be as long as each other: one block per upper layer"
        )
    if not all(size >= 1 for size in [*latent_dims, *hidden_dims]):
        raise ConfigError(
            f"model.upper_latent_dims={list(latent_dims)} and model.upper_hidden_dims="
            f"{list(hidden_dims)}: every size must be >= 1"
        )
    if block_layers < 1:
        raise ConfigError(f"model.upper_block_layers={block_layers} must be >= 1")
