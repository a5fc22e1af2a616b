"""Fully connected encoder and decoder: x -> 784 -> hidden_dims -> features; z -> reversed."""

import math
from collections.abc import Sequence

from torch import nn

from aelab.errors import ConfigError
from aelab.nets.layers import mlp


class MLP(nn.Module):
    """encoder: flatten, then Linear + activation per entry of `hidden_dims` (none: the pixels
    themselves are the features); decoder: the mirror image, ending in a linear layer to the
    pixels (logits)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not all(isinstance(h, int) and h > 0 for h in hidden_dims):
            raise ConfigError(
                f"model.net.hidden_dims={list(hidden_dims)} is not allowed; every size must be > 0"
            )
        pixels = math.prod(image_shape)
        self.features = hidden_dims[-1] if hidden_dims else pixels
        self.encoder = nn.Sequential(
            nn.Flatten(), mlp([pixels, *hidden_dims], activation, last_activation=True)
        )
        self.decoder = nn.Sequential(
            mlp([latent_dim, *reversed(hidden_dims), pixels], activation),
            nn.Unflatten(1, tuple(image_shape)),
        )
