"""torchvision's image datasets by name (`data=torchvision data.source.name=CIFAR10`;
`data=cifar10`, `data=svhn`, `data=celeba`): torchvision downloads, checks and parses the
files; aelab converts its training and test splits once into the same uint8 cache as a folder of
images (`aelab.data.cache`), under `paths.cache_dir`.

Datasets that hold their pixels as one array (CIFAR's `data`, SVHN's) are copied as they are;
others (CelebA's JPEGs) are decoded image by image, resized and centre-cropped to `image_size`.
"""

import hashlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aelab.data import cache
from aelab.data.folder import DECODE_CHUNK, image_array
from aelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Where to get the files by hand when torchvision cannot download them, and where they go
# (relative to the dataset's root); other datasets get torchvision's own words.
BY_HAND = {
    "CIFAR10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked into {root} "
    "(giving {root}/cifar-10-batches-py/)",
    "CIFAR100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, unpacked into {root} "
    "(giving {root}/cifar-100-python/)",
    "SVHN": "train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
    "into {root}/",
    "CelebA": "img_align_celeba.zip and list_eval_partition.txt, list_attr_celeba.txt, "
    "identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (its Google Drive); torchvision's "
    "automatic download of CelebA is known to fail. Put the five .txt files in {root}/celeba/ "
    "and unzip the images so that {root}/celeba/img_align_celeba/000001.jpg exists",
}
ROOTS = {"SVHN": "SVHN"}  # datasets whose files lie directly in their root: a folder of their own
LABELLED = {"CelebA": False}  # CelebA's targets are attributes, not classes


def dataset_class(name: str) -> type:
    """The torchvision dataset class `name`, if it is one with a training and a test split."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name, None)
    if not inspect.isclass(cls) or not _split_argument(cls):
        raise ConfigError(
            f"data.source.name={name!r} is not a torchvision image dataset with train and test "
            "splits; e.g. CIFAR10, CIFAR100, SVHN, CelebA"
        )
    return cls


def _split_argument(cls: type) -> str | None:
    parameters = inspect.signature(cls).parameters
    return next((p for p in ("train", "split") if p in parameters), None)


class TorchvisionSource(cache.CachedSource):
    """A torchvision dataset as the datamodule's uint8 tensors (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        data_dir: str,
        cache_dir: str,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> None:
        if channels not in (None, 1, 3):
            raise ConfigError(
                f"data.source.channels={channels} is not allowed; it must be 1, 3 or null"
            )
        if image_size is not None and image_size < 1:
            raise ConfigError(
                f"data.source.image_size={image_size} must be an integer > 0, or null"
            )
        self.cls = dataset_class(name)
        self.name = name
        data_path = Path(data_dir).expanduser()
        self.root = data_path / ROOTS[name] if name in ROOTS else data_path
        stem = f"{name}-{image_size or 'native'}-{channels or 'native'}"
        self.stem = Path(cache_dir).expanduser() / stem
        self.image_size = image_size
        self.channels = channels

    def fingerprint(self, split_seed: int) -> str:
        import torchvision

        settings = [self.name, str(self.root.absolute()), self.image_size, self.channels]
        settings += [split_seed, torchvision.__version__]
        return hashlib.sha1(json.dumps(settings).encode()).hexdigest()

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the cache, which `prepare` (or `ready`) found."""
        shape = self.cached_shape()
        if shape is None:
            raise DataError(f"{self.name}: its shape is read from its cache; prepare makes it")
        return shape

    def _open(self, train: bool, download: bool):
        kwargs: dict[str, Any] = {"download": download}
        if _split_argument(self.cls) == "train":
            kwargs["train"] = train
        else:
            kwargs["split"] = "train" if train else "test"
        if self.name == "CelebA":
            kwargs["target_type"] = []
        return self.cls(str(self.root), **kwargs)

    def datasets(self) -> tuple:
        """The training and test sets, downloaded by torchvision if they are not on disk."""
        try:
            return self._open(True, False), self._open(False, False)
        except Exception:
            pass  # not there (or incomplete): download below
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return self._open(True, True), self._open(False, True)
        except Exception as err:
            reason = " ".join(str(err).split())[-160:] or type(err).__name__
            where = BY_HAND.get(self.name, "its files where torchvision.datasets.{name} looks")
            raise DataError(
                f"{self.name} is not under {self.root} and downloading it failed ({reason}). "
                f"Offline, download {where.format(root=self.root, name=self.name)}, or set "
                f"paths.data_dir to a folder that has them"
            ) from None

    def prepare(self, split_seed: int) -> None:
        """Download with torchvision if needed, then convert both splits into the cache."""
        if self.ready(split_seed):
            return
        train, test = self.datasets()
        generator = torch.Generator().manual_seed(split_seed)
        # training images in the order data.split_seed gives: validation is the first ones
        order = torch.randperm(len(train), generator=generator).numpy()
        log.info(f"Converting {self.name} into {cache.paths(self.stem)[0]} (once)")
        labelled = LABELLED.get(self.name, True)
        first = self._arrays(train, np.array([0]))[0][0]
        shape = self._shape(first)
        writer = cache.Writer(self.stem, shape)
        labels: list[int] = []
        try:
            for dataset, indices in ((train, order), (test, np.arange(len(test)))):
                for start in range(0, len(indices), DECODE_CHUNK):
                    images, targets = self._arrays(dataset, indices[start : start + DECODE_CHUNK])
                    writer.add(np.stack([self._fit(image, shape) for image in images]))
                    labels += [int(t) if labelled else -1 for t in targets]
            classes = [str(c) for c in getattr(train, "classes", [])] if labelled else None
            if labelled and not classes:
                classes = [str(c) for c in range(max(labels) + 1)]
            writer.finish(self.fingerprint(split_seed), labels, len(train), classes)
            self.ready(split_seed)
        except BaseException:
            writer.abort()
            raise

    def _arrays(self, dataset, indices: np.ndarray) -> tuple[list, list]:
        """The images (uint8 (C, H, W) arrays or PIL images) and targets at `indices`."""
        data = getattr(dataset, "data", None)
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4:
            images = data[indices]
            if images.shape[-1] in (1, 3):  # (N, H, W, C), CIFAR's
                images = images.transpose(0, 3, 1, 2)
            targets = getattr(dataset, "targets", None)
            if targets is None:
                targets = getattr(dataset, "labels", None)
            targets = [-1] * len(indices) if targets is None else np.asarray(targets)[indices]
            return list(images), list(targets)
        pairs = [dataset[int(i)] for i in indices]
        return [p[0] for p in pairs], [p[1] if p[1] is not None else -1 for p in pairs]

    def _shape(self, first) -> tuple[int, int, int]:
        if isinstance(first, np.ndarray):
            channels, height, width = first.shape
        else:
            width, height = first.size
            channels = 1 if first.mode in ("1", "L") else 3
        channels = self.channels or channels
        if self.image_size is None:
            return (channels, height, width)
        if min(height, width) < self.image_size:
            raise DataError(
                f"{self.name}: images of {width}x{height} are smaller than "
                f"data.source.image_size={self.image_size}; use "
                f"data.source.image_size={min(height, width)}"
            )
        return (channels, self.image_size, self.image_size)

    def _fit(self, image, shape: tuple[int, int, int]) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.shape == shape:
                return image
            from PIL import Image

            image = Image.fromarray(image.transpose(1, 2, 0).squeeze(-1) if image.shape[0] == 1
                                    else image.transpose(1, 2, 0))  # fmt: skip
        return image_array(image, shape[1:], shape[0])
