"""Deterministic autoencoder: z = f(x), x_hat = g(z), loss = mean squared error per pixel.

`model=ae` (784 -> 128 -> 784), `model=deep_ae` (784 -> 128 -> 64 -> 12 -> 3 and back) and
`model=conv_ae` are this one class with different sizes and `architecture`.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aelab.models.base import AutoencoderModule, OptimizerFactory
from aelab.models.mlp import activation as activation_layer
from aelab.models.networks import decoder, encoder_body


class Autoencoder(AutoencoderModule):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        latent_activation: str | None = None,
        output_activation: str | None = "sigmoid",
        architecture: str = "mlp",
        channels: Sequence[int] = (32, 64),
        noise: str | None = None,
        noise_level: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, compile, noise, noise_level)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.latent_dim = latent_dim
        body, features = encoder_body(image_shape, architecture, hidden_dims, channels, activation)
        code = [body, nn.Linear(features, latent_dim)]
        if latent_activation is not None:
            code.append(activation_layer(latent_activation, "model.latent_activation"))
        self.encoder = nn.Sequential(*code)
        out = [decoder(latent_dim, image_shape, architecture, hidden_dims, channels, activation)]
        if output_activation is not None:
            out.append(activation_layer(output_activation, "model.output_activation"))
        self.decoder = nn.Sequential(*out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.decode(self.encode(x)), target)}
