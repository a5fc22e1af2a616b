"""Lightning callbacks of our own (the rest come from Lightning itself)."""

from aelab.callbacks.active_units import ActiveUnits
from aelab.callbacks.disentanglement import DisentanglementMetrics
from aelab.callbacks.image_grids import ImageGrids
from aelab.callbacks.latent_pictures import LatentPictures
from aelab.callbacks.progress import ProgressBar
from aelab.callbacks.reliability import DivergenceGuard, InterruptCheckpoint, LastCheckpoint

__all__ = [
    "ActiveUnits",
    "DisentanglementMetrics",
    "DivergenceGuard",
    "ImageGrids",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "LatentPictures",
    "ProgressBar",
]
