"""Vector-quantised autoencoder, VQ-VAE (van den Oord, Vinyals & Kavukcuoglu, 2017, "Neural
Discrete Representation Learning", NeurIPS).

The encoder's output z_e(x) (`latent_dim` numbers) is cut into latent_dim / code_dim vectors,
and each is replaced by its nearest of `codebook_size` learned vectors e_1..e_K:

    z_q = e_j,  j = argmin_i ||z_e - e_i||                                  (eq. 1-2)
    loss = -log p(x | z_q) + ||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2     (eq. 3)

in nats per image (Bernoulli decoder, as model=vae, so the two reconstruct with the same
likelihood), the squared norms summed over the code vectors of an image; sg is stop-gradient.
The decoder's gradient reaches the encoder straight through the quantisation (z_e + sg[z_q -
z_e]); beta is `model.commitment_weight` (0.25 in the paper). With `model.ema=true` the
codebook is no parameter: it follows exponential moving averages of the vectors assigned to
each code (appendix A.1: counts N_i and sums m_i decayed by `ema_decay`, e_i = m_i / N_i with
Laplace smoothing) and the codebook term leaves the loss.

A code whose moving-average use per training batch falls below `dead_code_threshold` is
restarted at a random encoder output of the current batch (0 turns this off); every code starts
unused, so the first training step moves each code that no vector chose onto an encoder output.
Logged besides: `commitment`, `codebook`, `mse` (per pixel, decoded code against the target image),
`perplexity` (exp of the entropy of the batch's code frequencies: K when all are used equally)
and `codes_used` (the share of the K codes the batch uses). There is no prior over the codes,
so the model does not sample: no `val/samples`, no `samples.png`.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aelab.errors import ConfigError
from aelab.models.base import AutoencoderModule

LAPLACE_EPS = 1e-5  # the smoothing of the EMA counts (Sonnet's VectorQuantizerEMA default)


class VectorQuantizer(nn.Module):
    """A codebook of `size` vectors of `dim` numbers, written here rather than taken from a
    library (vector-quantize-pytorch) so that each term is the paper's and tested as such."""

    codebook: torch.Tensor  # a Parameter, or a buffer that the EMA updates
    ema_count: torch.Tensor
    ema_sum: torch.Tensor
    usage: torch.Tensor

    def __init__(
        self, size: int, dim: int, ema: bool, decay: float, dead_code_threshold: float
    ) -> None:
        super().__init__()
        codebook = torch.empty(size, dim).uniform_(-1 / size, 1 / size)
        self.ema = ema
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(size))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # Moving-average uses per batch, from 0: the first training step restarts each code no
        # vector chose at an encoder output (a data-dependent start; codes drawn near 0 would
        # mostly go unused).
        self.register_buffer("usage", torch.zeros(size))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code of each vector z (..., dim)."""
        flat = z.reshape(-1, z.shape[-1])
        return torch.cdist(flat, self.codebook).argmin(-1).view(z.shape[:-1])

    def counts(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.bincount(indices.flatten(), minlength=self.codebook.shape[0]).to(
            self.codebook.dtype
        )

    @torch.no_grad()
    def update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """After a training step: the EMA codebook moves towards its assigned vectors, and dead
        codes restart at random vectors z (..., dim) of the batch."""
        flat, indices = z.reshape(-1, z.shape[-1]), indices.flatten()
        counts = self.counts(indices)
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.ema_count.sum()
            size = self.ema_count.shape[0]
            smoothed = (self.ema_count + LAPLACE_EPS) / (total + size * LAPLACE_EPS) * total
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        dead = (self.usage < self.dead_code_threshold).nonzero().flatten()
        if len(dead):
            picks = torch.randint(len(flat), (len(dead),), device=flat.device)
            self.codebook[dead] = flat[picks]
            self.usage[dead] = 1.0
            if self.ema:
                self.ema_count[dead] = 1.0
                self.ema_sum[dead] = flat[picks]


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(-sum_i p_i log p_i) of the code frequencies p = counts / their sum (0 log 0 = 0)."""
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


class VQVAE(AutoencoderModule):
    """h = net.encoder(x), z_e = W h + b in R^latent_dim, quantised per `code_dim` numbers;
    x_hat = sigmoid(net.decoder(z_q))."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 20,
        code_dim: int = 2,
        codebook_size: int = 512,
        commitment_weight: float = 0.25,
        ema: bool = False,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.01,
        **shared: Any,
    ) -> None:
        if code_dim < 1 or codebook_size < 1 or latent_dim % code_dim:
            raise ConfigError(
                f"model.codebook_size={codebook_size} and model.code_dim={code_dim} must be >= 1, "
                f"and model.latent_dim={latent_dim} a multiple of code_dim"
            )
        for key, value in (
            ("commitment_weight", commitment_weight),
            ("dead_code_threshold", dead_code_threshold),
        ):
            if not 0 <= value < math.inf:
                raise ConfigError(f"model.{key}={value} must be a finite number >= 0")
        if not 0 < ema_decay < 1:
            raise ConfigError(f"model.ema_decay={ema_decay} must be in (0, 1)")
        super().__init__(image_shape, latent_dim, **shared)
        self.code_dim = code_dim
        self.commitment_weight = commitment_weight
        self.to_code = nn.Linear(self.net.features, latent_dim)
        self.quantizer = VectorQuantizer(
            codebook_size, code_dim, ema, ema_decay, dead_code_threshold
        )
        self._assigned: tuple[torch.Tensor, torch.Tensor] | None = None  # the last step's

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x), before quantisation: the code of the latent probes and plots."""
        return self.to_code(self.net.encoder(x))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Each code_dim-vector of z (N, latent_dim) replaced by its nearest code."""
        vectors = z.unflatten(-1, (-1, self.code_dim))
        return self.quantizer.codebook[self.quantizer.nearest(vectors)].flatten(-2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of the quantised z: any code (an interpolation too) decodes as
        the codebook vectors nearest to it."""
        return torch.sigmoid(self.net.decoder(self.quantize(z)))

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = x.shape[0]
        z_e = self.encode(x).unflatten(-1, (-1, self.code_dim))  # (N, codes, code_dim)
        indices = self.quantizer.nearest(z_e)
        z_q = self.quantizer.codebook[indices]
        commitment = (z_e - z_q.detach()).pow(2).sum() / batch
        codebook = (z_e.detach() - z_q).pow(2).sum() / batch
        straight_through = z_e + (z_q - z_e).detach()
        logits = self.net.decoder(straight_through.flatten(1))
        recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch
        loss = recon + self.commitment_weight * commitment
        if not self.quantizer.ema:
            loss = loss + codebook
        if self.training:
            self._assigned = (z_e.detach(), indices)
        counts = self.quantizer.counts(indices)
        return {
            "loss": loss,
            "recon": recon,
            "commitment": commitment,
            "codebook": codebook.detach(),
            "mse": F.mse_loss(torch.sigmoid(logits), target).detach(),
            "perplexity": perplexity(counts),
            "codes_used": (counts > 0).to(counts.dtype).mean(),
        }

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The codebook's own updates, once the optimizer has stepped: EMA and restarts."""
        if self._assigned is not None:
            self.quantizer.update(*self._assigned)
            self._assigned = None
