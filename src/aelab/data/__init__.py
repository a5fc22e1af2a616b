"""Sources of images (IDX files, folders, torchvision's datasets, ground-truth factor sets) and
the datamodule that serves them as in-memory uint8 tensors."""

from aelab.data.datamodule import ImageDataModule
from aelab.data.factor_sources import DspritesSource, FactorNpzSource, ShapesSource
from aelab.data.folder import FolderSource
from aelab.data.idx import IdxSource
from aelab.data.placement import to_float
from aelab.data.source import GroundTruthSource, ImageSource, SourceImages
from aelab.data.torchvision import TorchvisionSource

__all__ = [
    "DspritesSource",
    "FactorNpzSource",
    "FolderSource",
    "GroundTruthSource",
    "IdxSource",
    "ImageDataModule",
    "ImageSource",
    "ShapesSource",
    "SourceImages",
    "TorchvisionSource",
    "to_float",
]
