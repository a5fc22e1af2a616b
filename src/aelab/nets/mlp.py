"""Fully connected encoder and decoder: x -> 784 -> hidden_dims -> features; z -> reversed."""

import math
from collections.abc import Sequence

from torch import nn

from aelab.errors import ConfigError
from aelab.nets.layers import mlp


class MLP(nn.Module):
    """encoder: flatten, then Linear + activation per entry of `hidden_dims` (none: the pixels
    themselves are the features); decoder: the mirror image, ending in a linear layer to the
    pixels (logits). `batch_norm`: a BatchNorm1d after each hidden Linear, before its activation
    (the batch normalisation of Sønderby et al.'s VAE baselines); the output layer has none."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if not all(isinstance(h, int) and h > 0 for h in hidden_dims):
            raise ConfigError(
                f"model.net.hidden_dims={list(hidden_dims)} is not allowed; every size must be > 0"
            )
        pixels = math.prod(image_shape)
        self.features = hidden_dims[-1] if hidden_dims else pixels
        self.encoder = nn.Sequential(
            nn.Flatten(),
            mlp([pixels, *hidden_dims], activation, last_activation=True, batch_norm=batch_norm),
        )
        self.decoder = nn.Sequential(
            mlp([latent_dim, *reversed(hidden_dims), pixels], activation, batch_norm=batch_norm),
            nn.Unflatten(1, tuple(image_shape)),
        )
