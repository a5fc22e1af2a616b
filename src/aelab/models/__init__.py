"""Autoencoder families, one file each, sharing `AutoencoderModule`'s training loop."""

from aelab.models.autoencoder import Autoencoder
from aelab.models.base import AutoencoderModule
from aelab.models.vae import VAE

__all__ = ["VAE", "Autoencoder", "AutoencoderModule"]
