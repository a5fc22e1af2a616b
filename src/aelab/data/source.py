"""What every source of images gives the datamodule (aelab.data.ImageDataModule): uint8 tensors
and labels, a training file and a test set. IDX files (aelab.data.idx), folders of images
(aelab.data.folder) and torchvision's datasets (aelab.data.torchvision) are sources; a source of
your own is any class with these methods, named by `data.source._target_` (docs/extending.md).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SourceImages:
    """A source's images (N, C, H, W) as uint8 and labels (N,) as int64 (-1: unlabelled).

    `order`: the permutation of the training file that `split_seed` gives (validation first),
    applied by the datamodule; None when `train` already comes in that order (a cache made in
    it, whose sets are then views of one mapped file). `release` gives a mapped file's pages
    back after each gather (aelab.data.cache)."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str] | None
    order: torch.Tensor | None = None
    release: Callable[[], None] | None = None


@runtime_checkable
class ImageSource(Protocol):
    """`name` keys what is computed once per dataset (evaluation's classifiers, baselines)."""

    name: str

    def prepare(self, split_seed: int) -> None:
        """Fetch the files (download them, decode them into a cache): on one process per node,
        before the others read them."""

    def ready(self, split_seed: int) -> bool:
        """Whether what `prepare` makes is complete (the node's other processes wait for it)."""

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width), read without loading every image (after `prepare`)."""

    def load(self, split_seed: int) -> SourceImages:
        """The images and labels, read into memory or mapped (after `prepare`)."""
