"""Datasets as in-memory tensors and the LightningDataModule that serves them."""

from aelab.data.datamodule import ImageDataModule, to_float

__all__ = ["ImageDataModule", "to_float"]
