"""Autoencoder families, one file each, sharing `AutoencoderModule`'s training loop."""

from aelab.models.autoencoder import Autoencoder
from aelab.models.base import AutoencoderModule
from aelab.models.beta_tcvae import BetaTCVAE
from aelab.models.capacity_vae import CapacityVAE
from aelab.models.factor_vae import FactorVAE
from aelab.models.iwae import IWAE
from aelab.models.ladder_vae import LadderVAE
from aelab.models.two_layer_vae import TwoLayerVAE
from aelab.models.vae import VAE
from aelab.models.vampprior import VampPriorVAE
from aelab.models.vqvae import VQVAE
from aelab.models.wae import WAE

__all__ = [
    "IWAE",
    "VAE",
    "VQVAE",
    "WAE",
    "Autoencoder",
    "AutoencoderModule",
    "BetaTCVAE",
    "CapacityVAE",
    "FactorVAE",
    "LadderVAE",
    "TwoLayerVAE",
    "VampPriorVAE",
]
