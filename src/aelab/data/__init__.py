"""Sources of images (IDX files, folders, torchvision's datasets) and the datamodule that serves
them as in-memory uint8 tensors."""

from aelab.data.datamodule import ImageDataModule
from aelab.data.folder import FolderSource
from aelab.data.idx import IdxSource
from aelab.data.placement import to_float
from aelab.data.source import ImageSource, SourceImages
from aelab.data.torchvision import TorchvisionSource

__all__ = [
    "FolderSource",
    "IdxSource",
    "ImageDataModule",
    "ImageSource",
    "SourceImages",
    "TorchvisionSource",
    "to_float",
]
