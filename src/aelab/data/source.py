"""What every source of images gives the datamodule (aelab.data.ImageDataModule): uint8 tensors
and labels, a training file and a test set. IDX files (aelab.data.idx), folders of images
(aelab.data.folder) and torchvision's datasets (aelab.data.torchvision) are sources; a source of
your own is any class with these methods, named by `data.source._target_` (docs/extending.md).

Ground truth, optional: a source whose images were made from known factors (dSprites, the
generated shapes, an .npz of one's own: aelab.data.factor_sources) also has the method of
`GroundTruthSource`. After `setup()`, the datamodule's `ground_truth` is then its
`aelab.data.factors.FactorImages` over the WHOLE dataset, training, validation and test images
together, each image once with its row of factors: numpy uint8 images (N, C, H, W) as the source
stores them (not binarized), int64 factor class indices (N, F), the factors' names and numbers
of values. For every other source `ground_truth` is None: a source without the method is no
less a source. The factors ride along like labels for the disentanglement metrics; training
never reads them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from aelab.data.factors import FactorImages


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


@runtime_checkable
class GroundTruthSource(ImageSource, Protocol):
    """A source of images with their generative factors (see the module's docstring)."""

    def ground_truth(self, split_seed: int) -> FactorImages:
        """Every image of the dataset (training file and test set) with its factors, in any
        order (after `prepare`)."""


def ground_truth_of(source: ImageSource, split_seed: int) -> FactorImages | None:
    """The source's ground-truth set, or None for a source without factors."""
    return source.ground_truth(split_seed) if isinstance(source, GroundTruthSource) else None
