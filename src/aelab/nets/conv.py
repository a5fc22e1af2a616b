"""Convolutional encoder and decoder: stride-2 4x4 convolutions, mirrored by transposed ones."""

from collections.abc import Sequence

from torch import nn

from aelab.errors import ConfigError
from aelab.nets.layers import activation as activation_layer


def conv_sizes(image_shape: Sequence[int], channels: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial size after each stride-2 convolution: n -> n // 2."""
    _, height, width = image_shape
    sizes = [(height, width)]
    for _ in channels:
        height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ConfigError(
                f"model.net.channels={list(channels)}: {len(channels)} stride-2 convolutions "
                f"shrink {tuple(image_shape[1:])} images to nothing; use fewer channel entries"
            )
        sizes.append((height, width))
    return sizes


class ConvNet(nn.Module):
    """encoder: one stride-2 4x4 convolution + activation per entry of `channels`, flattened;
    decoder: a linear layer to the smallest feature map, then transposed convolutions back to the
    image (any height and width, odd ones included), ending in logits."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ConfigError(
                f"model.net.channels={list(channels)} is not allowed; give one size > 0 or more"
            )
        sizes = conv_sizes(image_shape, channels)
        height, width = sizes[-1]
        self.features = channels[-1] * height * width
        inputs = [image_shape[0], *channels[:-1]]
        encoder: list[nn.Module] = []
        for c_in, c_out in zip(inputs, channels, strict=True):
            encoder += [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                activation_layer(activation),
            ]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        decoder: list[nn.Module] = [
            nn.Linear(latent_dim, self.features),
            activation_layer(activation),
            nn.Unflatten(1, (channels[-1], height, width)),
        ]
        for i in reversed(range(len(channels))):
            # output_padding restores the row or column that n // 2 dropped for odd n
            padding = (sizes[i][0] % 2, sizes[i][1] % 2)
            decoder.append(
                nn.ConvTranspose2d(channels[i], inputs[i], 4, 2, padding=1, output_padding=padding)
            )
            if i > 0:
                decoder.append(activation_layer(activation))
        self.decoder = nn.Sequential(*decoder)
