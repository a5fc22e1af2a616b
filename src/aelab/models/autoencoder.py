"""Deterministic autoencoder: z = f(x), x_hat = g(z), loss = mean squared error per pixel.

    h = net.encoder(x),   z = a_z(W h + b),   x_hat = a_out(net.decoder(z))

`model=ae` (784 -> 128 -> 784), `model=deep_ae` (784 -> 128 -> 64 -> 12 -> 3 and back) and
`model=conv_ae` are this one class with different networks and sizes.
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aelab.models.base import AutoencoderModule
from aelab.nets import activation
from aelab.nets.init import inverse_activation


class Autoencoder(AutoencoderModule):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        latent_activation: str | None = None,
        output_activation: str | None = "sigmoid",
        **shared: Any,
    ) -> None:
        super().__init__(image_shape, latent_dim, **shared)
        code: list[nn.Module] = [nn.Linear(self.net.features, latent_dim)]
        if latent_activation is not None:
            code.append(activation(latent_activation, "model.latent_activation"))
        self.to_code = nn.Sequential(*code)
        self.output = (
            nn.Identity()
            if output_activation is None
            else activation(output_activation, "model.output_activation")
        )
        self.output_activation = output_activation
        if self.output_bias == "data":
            inverse_activation(output_activation)  # one without an inverse fails here

    def output_inverse(self, means: torch.Tensor) -> torch.Tensor:
        """The decoder's output whose `output_activation` is `means` (model.output_bias=data)."""
        return inverse_activation(self.output_activation)(means)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.net.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(self.net.decoder(z))

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.decode(self.encode(x)), target)}
