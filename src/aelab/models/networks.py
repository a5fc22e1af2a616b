"""Encoder bodies and decoders, MLP or convolutional, sized from the image shape.

Every model family (`Autoencoder`, `VAE`) is built from these two pieces, so `model.architecture`
switches any of them between fully connected and convolutional networks.
"""

import math
from collections.abc import Sequence

from torch import nn

from aelab.errors import ConfigError
from aelab.models.mlp import activation as activation_layer
from aelab.models.mlp import mlp

ARCHITECTURES = ("mlp", "conv")


def _check(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"model.architecture={architecture!r} is unknown; allowed: {list(ARCHITECTURES)}"
        )


def _conv_sizes(image_shape: Sequence[int], channels: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial size after each stride-2 convolution: n -> n // 2."""
    _, height, width = image_shape
    sizes = [(height, width)]
    for _ in channels:
        height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ConfigError(
                f"model.channels={list(channels)}: {len(channels)} stride-2 convolutions shrink "
                f"{tuple(image_shape[1:])} images to nothing; use fewer channel entries"
            )
        sizes.append((height, width))
    return sizes


def encoder_body(
    image_shape: Sequence[int],
    architecture: str,
    hidden_dims: Sequence[int],
    channels: Sequence[int],
    activation: str,
) -> tuple[nn.Module, int]:
    """x (N, C, H, W) -> features (N, F); returns the module and F."""
    _check(architecture)
    if architecture == "mlp":
        sizes = [math.prod(image_shape), *hidden_dims]
        last = activation if hidden_dims else None
        return nn.Sequential(nn.Flatten(), mlp(sizes, activation, last, "model.activation")), sizes[
            -1
        ]
    layers: list[nn.Module] = []
    for c_in, c_out in zip([image_shape[0], *channels[:-1]], channels, strict=True):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), activation_layer(activation)]
    height, width = _conv_sizes(image_shape, channels)[-1]
    return nn.Sequential(*layers, nn.Flatten()), channels[-1] * height * width


def decoder(
    latent_dim: int,
    image_shape: Sequence[int],
    architecture: str,
    hidden_dims: Sequence[int],
    channels: Sequence[int],
    activation: str,
) -> nn.Module:
    """z (N, latent_dim) -> logits (N, C, H, W): the mirror image of `encoder_body`."""
    _check(architecture)
    if architecture == "mlp":
        sizes = [latent_dim, *reversed(hidden_dims), math.prod(image_shape)]
        return nn.Sequential(mlp(sizes, activation), nn.Unflatten(1, tuple(image_shape)))
    sizes = _conv_sizes(image_shape, channels)
    height, width = sizes[-1]
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, channels[-1] * height * width),
        activation_layer(activation),
        nn.Unflatten(1, (channels[-1], height, width)),
    ]
    outputs = [image_shape[0], *channels[:-1]]
    for i in reversed(range(len(channels))):
        # output_padding restores the row or column that n // 2 dropped for odd n
        padding = (sizes[i][0] % 2, sizes[i][1] % 2)
        layers.append(
            nn.ConvTranspose2d(channels[i], outputs[i], 4, 2, padding=1, output_padding=padding)
        )
        if i > 0:
            layers.append(activation_layer(activation))
    return nn.Sequential(*layers)
