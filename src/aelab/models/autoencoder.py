"""Deterministic MLP autoencoder: z = f(x), x_hat = g(z), loss = mean squared error per pixel.

`model=ae` (784 -> 128 -> 784) and `model=deep_ae` (784 -> 128 -> 64 -> 12 -> 3 and back) are
this one class with different sizes.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aelab.models.base import AutoencoderModule, OptimizerFactory
from aelab.models.mlp import mlp


class Autoencoder(AutoencoderModule):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        latent_activation: str | None = None,
        output_activation: str | None = "sigmoid",
        optimizer: OptimizerFactory | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, compile)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        pixels = math.prod(image_shape)
        sizes = [pixels, *hidden_dims, latent_dim]
        self.encoder = nn.Sequential(
            nn.Flatten(),
            mlp(sizes, activation, latent_activation, final_key="model.latent_activation"),
        )
        self.decoder = nn.Sequential(
            mlp(sizes[::-1], activation, output_activation),
            nn.Unflatten(1, tuple(image_shape)),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x_hat = self.decode(self.encode(x))
        return {"loss": F.mse_loss(x_hat, x)}
