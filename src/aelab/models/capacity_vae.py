"""beta-VAE with a controlled, annealed capacity (Burgess, Higgins, Pal, Matthey, Watters,
Desjardins & Lerchner, 2018, "Understanding disentangling in beta-VAE", NIPS workshop).

The VAE's networks; the KL term is pushed towards a target capacity C instead of towards 0
(eq. 8 of the paper):

    loss = E_q[-log p(x|z)] + gamma * |KL(q(z|x) || p(z)) - C|,   in nats per image
    C(t) = C_max * min(1, t / capacity_epochs),   t = epochs of training done (fractional)

so the code may carry C nats per image, a budget raised linearly while training: the factors
that most reduce the reconstruction error are encoded first, one after another, as C grows
(the paper's account of why this disentangles). The KL is analytic (the VAE's). Validation and
test use C = C_max, the objective the schedule ends at, so that `val/loss` compares epochs and
picks the best checkpoint by it. Logs `capacity` (C) beside `recon`, `kl` and `loss`.

The paper's dSprites settings: gamma = 1000, C_max = 25 nats, raised over 100,000 iterations of
batch 64 (6.4 M images: 8.7 epochs of dSprites' 737,280 images, 139 of the generated shapes'
46,080). The defaults keep gamma and C_max and raise C over `capacity_epochs` = 10 epochs, for
CPU budgets of about 20 epochs: train past the ramp for the code to settle at C_max.
"""

from collections.abc import Sequence
from typing import Any

import torch

from aelab.errors import ConfigError
from aelab.models.vae import VAE


class CapacityVAE(VAE):
    """The VAE whose KL is held near a capacity C that rises from 0 to `capacity_max` nats."""

    fixed = ("beta", "kl_warmup_epochs")  # the VAE's KL weight and warm-up: C replaces them

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 10,
        gamma: float = 1000.0,
        capacity_max: float = 25.0,
        capacity_epochs: float = 10.0,
        **vae: Any,
    ) -> None:
        for key, value in (
            ("gamma", gamma),
            ("capacity_max", capacity_max),
            ("capacity_epochs", capacity_epochs),
        ):
            if value < 0:
                raise ConfigError(f"model.{key}={value} must be >= 0")
        super().__init__(image_shape, latent_dim, **vae)
        self.gamma = gamma
        self.capacity_max = capacity_max
        self.capacity_epochs = capacity_epochs

    def capacity(self) -> float:
        """C in nats: linear in the epochs of training done up to `capacity_epochs`, then
        `capacity_max`; always `capacity_max` in evaluation."""
        if not self.training or self.capacity_epochs == 0:
            return self.capacity_max
        return self.capacity_max * min(1.0, self.epoch_progress / self.capacity_epochs)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(x, target)  # recon, analytic kl (and bpd) of one draw
        capacity = terms["kl"].new_tensor(self.capacity())
        terms["loss"] = terms["recon"] + self.gamma * (terms["kl"] - capacity).abs()
        terms["capacity"] = capacity
        return terms
