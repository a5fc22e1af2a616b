"""Residual convolutional encoder and decoder for colour images (CIFAR-10 at 32x32, CelebA at
64x64), in the shape Lightning-Bolts' and pythae's ResNet autoencoders take.

encoder: a 3x3 convolution to `channels`, then per stage a residual block and a stride-2
convolution that halves the size and doubles the channels (at most `max_channels`), until the
feature map is 4x4 (or a side is odd), flattened; decoder: the mirror image, a linear layer to that
map, per stage a 4x4 transposed convolution that doubles the size and a residual block, then a
3x3 convolution to the image's channels (logits). Any channel count; 32x32 inputs get three
stages, 64x64 four.
"""

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from aelab.errors import ConfigError
from aelab.nets.layers import activation as activation_layer

SMALLEST = 4  # stages stop once the feature map is this small


class ResidualBlock(nn.Module):
    """x + conv3x3(act(norm(conv3x3(act(norm(x)))))), the pre-activation block (He et al., 2016)."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            activation_layer(activation),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            activation_layer(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def stage_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The feature map's size before each stage and after the last: halved while both sides are
    even and larger than `SMALLEST`."""
    sizes = [(height, width)]
    while all(side % 2 == 0 and side > SMALLEST for side in sizes[-1]):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


class ResNet(nn.Module):
    """Residual encoder/decoder sized from the image shape (see the module's docstring)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: int = 32,
        max_channels: int = 256,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if channels < 1 or max_channels < channels:
            raise ConfigError(
                f"model.net.channels={channels} and model.net.max_channels={max_channels}: "
                "need 1 <= channels <= max_channels"
            )
        image_channels, height, width = image_shape
        sizes = stage_sizes(height, width)
        widths = [min(channels * 2**i, max_channels) for i in range(len(sizes))]
        self.features = widths[-1] * sizes[-1][0] * sizes[-1][1]
        encoder: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1)]
        for c_in, c_out in pairwise(widths):
            encoder += [
                ResidualBlock(c_in, activation),
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
            ]
        encoder += [ResidualBlock(widths[-1], activation), activation_layer(activation)]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        decoder: list[nn.Module] = [
            nn.Linear(latent_dim, self.features),
            nn.Unflatten(1, (widths[-1], *sizes[-1])),
            ResidualBlock(widths[-1], activation),
        ]
        for c_in, c_out in pairwise(reversed(widths)):
            decoder += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                ResidualBlock(c_out, activation),
            ]
        decoder += [
            nn.BatchNorm2d(widths[0]),
            activation_layer(activation),
            nn.Conv2d(widths[0], image_channels, 3, padding=1),
        ]
        self.decoder = nn.Sequential(*decoder)
