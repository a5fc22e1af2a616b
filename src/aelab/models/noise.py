"""The corruption of a denoising autoencoder's inputs (`model.noise`, `model.noise_level`)."""

import torch

from aelab.errors import ConfigError

NOISES = (None, "gaussian", "masking")


def check_noise(noise: str | None, level: float) -> None:
    """One line naming the key when the noise is unknown or its level out of range."""
    if noise not in NOISES:
        raise ConfigError(f"model.noise={noise!r} is unknown; allowed: {list(NOISES)}")
    limit = 1 if noise == "masking" else 10
    if noise is not None and not 0 < level <= limit:
        raise ConfigError(f"model.noise_level={level} must be in (0, {limit}] ({noise})")


def corrupted(
    x: torch.Tensor, noise: str | None, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian noise of std `level` (clipped to [0, 1]), or masking that zeroes each pixel
    with probability `level`; `x` itself without noise."""
    if noise == "gaussian":
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * eps).clamp_(0, 1)
    if noise == "masking":
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= level
        return x * keep
    return x
