"""Initialisation of a model's weights, the choices `model.init` and `model.output_bias`.

- `glorot`: every linear and convolutional layer's weights Glorot-uniform, U(-a, a) with
  a = sqrt(6 / (fan_in + fan_out)), and its biases zero, as yburda/iwae initialises all its
  layers (Glorot & Bengio, 2010); `default` keeps PyTorch's (Kaiming-uniform with a = sqrt(5)).
- `data` output bias: the decoder's output layer's bias set to the value whose output is each
  pixel's mean over the training images, clipped to [0.001, 0.999] (MNIST's corner pixels are
  always 0): logit(clip(mean)) for a decoder ending in sigmoid, as yburda/iwae's
  `get_train_bias_np` does, so that every pixel starts at its marginal rather than at 0.5. One
  value per pixel for an output layer with one bias per pixel (the MLP's Linear), one per channel
  (the mean over that channel's pixels) for one with a bias per channel (a convolution's).

The output layer is the network's `output_layer` attribute if it has one, else the last module of
its `decoder` (in module order) that has a `bias` parameter: the contract a network of your own
meets to get `model.output_bias=data`.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from aelab.errors import ConfigError

INITS = ("default", "glorot")
OUTPUT_BIASES = ("default", "data")
CLIP = 0.001  # pixel means are clipped to [CLIP, 1 - CLIP] before the inverse activation
CHUNK = 4096  # training images summed at a time: a memory-mapped cache is never read whole
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


# Output activation -> its inverse on (0, 1): the pre-activation whose output is a given mean.
INVERSES: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.logit,
    "tanh": torch.atanh,
    None: identity,
    "relu": identity,
    "leaky_relu": identity,
    "elu": identity,
}


def check_choices(init: str, output_bias: str) -> None:
    """One line naming the key whose value is not one of its choices."""
    if init not in INITS:
        raise ConfigError(f"model.init={init!r} is unknown; allowed: {list(INITS)}")
    if output_bias not in OUTPUT_BIASES:
        raise ConfigError(
            f"model.output_bias={output_bias!r} is unknown; allowed: {list(OUTPUT_BIASES)}"
        )


def inverse_activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The inverse on (0, 1) of the output activation `name` (None: no activation)."""
    if name not in INVERSES:
        raise ConfigError(
            f"model.output_bias=data needs an invertible model.output_activation, not {name!r}; "
            f"allowed: {sorted(map(str, INVERSES))}, or set model.output_bias=default"
        )
    return INVERSES[name]


def glorot_(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases in every linear and convolutional layer."""
    for layer in module.modules():
        if isinstance(layer, WEIGHTED):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def output_layer(net: nn.Module, image_shape: Sequence[int]) -> nn.Module:
    """The layer whose bias `model.output_bias=data` sets (see the module's docstring); one
    line naming the key when the network has none with one bias per pixel or per channel."""
    layer = getattr(net, "output_layer", None)
    if layer is None:
        decoder = getattr(net, "decoder", nn.Module())
        with_bias = [
            m for m in decoder.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)
        ]
        layer = with_bias[-1] if with_bias else None
    channels, pixels = image_shape[0], math.prod(image_shape)
    bias = getattr(layer, "bias", None)
    if (
        layer is None
        or not isinstance(bias, nn.Parameter)
        or bias.numel() not in (pixels, channels)
    ):
        raise ConfigError(
            f"model.output_bias=data: {type(net).__name__} has no output layer with a bias of "
            f"{pixels} (one per pixel) or {channels} (one per channel) entries (its "
            "`output_layer`, else the last module of its `decoder` with a bias); set "
            "model.output_bias=default"
        )
    return layer


def pixel_means(
    images: torch.Tensor, after_chunk: Callable[[], None] | None = None
) -> torch.Tensor:
    """Each pixel's mean (C, H, W) in [0, 1] over images (N, C, H, W), uint8 in [0, 255] or
    floats in [0, 1], summed `CHUNK` images at a time (exactly, in float64; `after_chunk` runs
    after each: a memory-mapped cache gives its pages back there)."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64, device=images.device)
    for chunk in images.split(CHUNK):
        total += chunk.sum(0, dtype=torch.float64)
        if after_chunk is not None:
            after_chunk()
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    return total.div_(len(images) * scale).cpu()


def output_bias(
    means: torch.Tensor, size: int, inverse: Callable[[torch.Tensor], torch.Tensor] = torch.logit
) -> torch.Tensor:
    """inverse(clip(mean)) per pixel (`size` = C * H * W, flattened as (C, H, W)) or per channel
    (`size` = C, the mean over each channel's pixels) of pixel means (C, H, W)."""
    per_channel = size == means.shape[0] and size != means.numel()
    values = means.mean((1, 2)) if per_channel else means.flatten()
    return inverse(values.clamp(CLIP, 1 - CLIP))


def set_output_bias(
    net: nn.Module,
    means: torch.Tensor,
    inverse: Callable[[torch.Tensor], torch.Tensor] = torch.logit,
) -> None:
    """The output layer's bias of `net` from the training images' pixel means (C, H, W)."""
    bias = output_layer(net, means.shape).bias
    assert isinstance(bias, nn.Parameter)  # output_layer checked it
    with torch.no_grad():
        bias.copy_(output_bias(means, bias.numel(), inverse).view_as(bias))
