"""Any folder of images (`data=folder data.source.path=DIR`), decoded once into a uint8 cache.

Layout, as torchvision's ImageFolder: subfolders of `DIR` are classes (their names, sorted, are
the labels); images directly in `DIR` have no labels. `DIR/train/` and `DIR/test/`, when both
exist, are the training and test sets, each in that layout; otherwise `TEST_SHARE` of the images
(a fixed choice) is the test set. Every PNG, JPEG, BMP or WebP image is converted to `channels`
(default: 3 if any image is in colour, else 1), resized (shorter side) and centre-cropped to
`image_size` (default: the images' own size, when they all share one).

The cache (`aelab.data.cache`) lies in `DIR/.aelab-cache.*` when `DIR` is writable, else in
`cache_dir`; its fingerprint is every file's name, size and modification time plus the settings,
so adding, removing or changing a file, or another image size, rebuilds it.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aelab.data import cache
from aelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_SHARE = 0.1  # of a folder without train/ and test/, held out for testing
TEST_SEED = 20240101  # which images those are: the same whatever data.split_seed
DECODE_CHUNK = 1024  # images decoded before they are written to the cache


@dataclass
class Listing:
    """The image files of a folder: (path, label) pairs for training and testing."""

    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    classes: list[str] | None
    split: bool  # DIR/train/ and DIR/test/ were used


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in pattern if p.suffix.lower() in EXTENSIONS and p.is_file() and _visible(p, folder)
    )


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _one_set(folder: Path, classes: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    """The images of one folder in ImageFolder's layout; `classes` given: those of the training
    set, which a test folder's class folders must be among."""
    subdirs = _class_dirs(folder)
    loose = _images_in(folder, recursive=False)
    if not subdirs:
        return [(p, -1) for p in loose], []
    if loose:
        raise DataError(
            f"{folder}: holds both images ({loose[0].name}, ...) and class folders "
            f"({subdirs[0].name}, ...); put every image in a class folder, or none"
        )
    names = [d.name for d in subdirs]
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(
                f"{folder}: class folder {unknown[0]} has no counterpart among the training "
                f"classes ({', '.join(classes)})"
            )
        names = classes
    files = [(p, names.index(d.name)) for d in subdirs for p in _images_in(d, recursive=True)]
    return files, names


def list_folder(root: Path) -> Listing:
    """Every image under `root`, by split and class, or one line saying why there are none."""
    if not root.is_dir():
        raise DataError(f"data.source.path={str(root)!r} is not a folder")
    train_dir, test_dir = root / "train", root / "test"
    split = train_dir.is_dir() and test_dir.is_dir()
    if split:
        train, classes = _one_set(train_dir, None)
        test, _ = _one_set(test_dir, classes or None)
        if bool(classes) != (not test or test[0][1] >= 0):
            raise DataError(f"{root}: train/ and test/ must both have class folders, or neither")
    else:
        files, classes = _one_set(root, None)
        generator = torch.Generator().manual_seed(TEST_SEED)
        order = torch.randperm(len(files), generator=generator).tolist()
        n_test = round(TEST_SHARE * len(files))
        test = [files[i] for i in sorted(order[:n_test])]
        train = [files[i] for i in sorted(order[n_test:])]
    where = f"{root} (and its subfolders)"
    if not train and not test:
        anything = any(root.iterdir())
        raise DataError(
            f"{where} holds {'no images' if anything else 'nothing'}: data=folder reads "
            f"{', '.join(e[1:].upper() for e in EXTENSIONS)} files"
        )
    if len(train) < 2 or not test:
        raise DataError(
            f"{where}: {len(train)} training and {len(test)} test images; data=folder needs "
            "at least 2 and 1 (a folder of fewer than 10 images holds out none for testing)"
        )
    return Listing(train, test, classes or None, split)


def image_array(image, size: tuple[int, int], channels: int) -> np.ndarray:
    """A PIL image as uint8 (channels, *size): converted, resized (its shorter side to the
    target's) and centre-cropped, as torchvision's Resize and CenterCrop do."""
    from torchvision.transforms.functional import center_crop, resize

    image = image.convert("L" if channels == 1 else "RGB")
    if (image.height, image.width) != size:
        image = center_crop(resize(image, min(size), antialias=True), list(size))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


class FolderSource(cache.CachedSource):
    """A folder of images as the datamodule's uint8 tensors (see the module's docstring)."""

    name = "folder"

    def __init__(
        self,
        path: str,
        cache_dir: str,
        image_size: int | None = None,
        channels: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        if image_size is not None and image_size < 1:
            raise ConfigError(
                f"data.source.image_size={image_size} must be an integer > 0, or null"
            )
        if channels not in (None, 1, 3):
            raise ConfigError(
                f"data.source.channels={channels} is not allowed; it must be 1, 3 or null"
            )
        self.root = Path(path).expanduser()
        self.cache_dir = Path(cache_dir).expanduser()
        self.stem = self.cache_stem(self.root, self.cache_dir)
        self.image_size = image_size
        self.channels = channels
        self.skip_bad = skip_bad
        self._listing: Listing | None = None

    @staticmethod
    def cache_stem(root: Path, cache_dir: Path) -> Path:
        """Where the cache lies: in the folder when it is writable, else under `cache_dir`."""
        if os.access(root, os.W_OK):
            return root / ".aelab-cache"
        digest = hashlib.sha1(str(root.absolute()).encode()).hexdigest()[:16]
        return cache_dir / f"folder-{digest}"

    def listing(self) -> Listing:
        if self._listing is None:
            self._listing = list_folder(self.root)
        return self._listing

    def fingerprint(self, split_seed: int) -> str:
        """What the cache is made from: every file's name, size and mtime, and the settings."""
        listing = self.listing()
        entries = []
        for part in (listing.train, listing.test):
            for path, label in part:
                stat = path.stat()
                entries.append([str(path.relative_to(self.root)), label, stat.st_size])
                entries[-1].append(stat.st_mtime_ns)
        settings = [self.image_size, self.channels, self.skip_bad, split_seed]
        text = json.dumps([settings, listing.classes, entries])
        return hashlib.sha1(text.encode()).hexdigest()

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the cache, or that it will have (from the headers)."""
        shape = self.cached_shape()
        if shape is not None:
            return shape
        listing = self.listing()
        size, channels, _ = self._inspect(listing.train + listing.test)
        return (channels, *size)

    def prepare(self, split_seed: int) -> None:
        """Decode the images into the cache unless an up-to-date one is there."""
        if self.ready(split_seed):
            return
        listing = self.listing()
        generator = torch.Generator().manual_seed(split_seed)
        order = torch.randperm(len(listing.train), generator=generator).tolist()
        # the training images in the order data.split_seed gives: validation is the first ones
        train = [listing.train[i] for i in order]
        size, channels, bad = self._inspect(train + listing.test)
        log.info(
            f"Decoding {len(train) + len(listing.test)} images of {self.root} into "
            f"{cache.paths(self.stem)[0]} (once; later runs read that file)"
        )
        writer = cache.Writer(self.stem, (channels, *size))
        try:
            labels, n_train = self._decode(writer, train, listing.test, size, channels, bad)
            writer.finish(self.fingerprint(split_seed), labels, n_train, listing.classes)
            self.ready(split_seed)
        except BaseException:
            writer.abort()
            raise
        if bad:
            log.warning(
                f"data.source.skip_bad=true: skipped {len(bad)} of "
                f"{len(train) + len(listing.test)} images of {self.root} that cannot be decoded "
                f"(the first: {sorted(bad)[0]})"
            )

    def _bad(self, path: Path, err: Exception, bad: set[Path]) -> None:
        if not self.skip_bad:
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            raise DataError(
                f"{path}: cannot be decoded as an image ({reason}); remove it, or set "
                "data.source.skip_bad=true to skip such files"
            ) from None
        bad.add(path)

    def _inspect(self, files: list[tuple[Path, int]]) -> tuple[tuple[int, int], int, set[Path]]:
        """(height, width) and channels of the cache, from every file's header."""
        from PIL import Image

        sizes: dict[tuple[int, int], Path] = {}
        smallest: tuple[int, Path] | None = None
        colour = False
        bad: set[Path] = set()
        for path, _ in files:
            try:
                with Image.open(path) as image:
                    width, height = image.size
                    colour = colour or image.mode not in GREY_MODES
            except Exception as err:
                self._bad(path, err, bad)
                continue
            sizes.setdefault((height, width), path)
            if smallest is None or min(height, width) < smallest[0]:
                smallest = (min(height, width), path)
        if smallest is None:
            raise DataError(f"{self.root}: none of its images can be decoded")
        channels = self.channels or (3 if colour else 1)
        if self.image_size is None:
            if len(sizes) > 1:
                (a, pa), (b, pb) = list(sizes.items())[:2]
                raise DataError(
                    f"{self.root}: images of {len(sizes)} different sizes (e.g. {a[1]}x{a[0]} "
                    f"{pa.name}, {b[1]}x{b[0]} {pb.name}); set data.source.image_size=N to "
                    "resize and centre-crop them to NxN, e.g. "
                    f"data.source.image_size={smallest[0]} (their smallest side)"
                )
            return next(iter(sizes)), channels, bad
        if smallest[0] < self.image_size:
            raise DataError(
                f"{smallest[1]}: its smaller side is {smallest[0]} pixels, less than "
                f"data.source.image_size={self.image_size}; use "
                f"data.source.image_size={smallest[0]} or less, or remove the small images"
            )
        return (self.image_size, self.image_size), channels, bad

    def _decode(
        self,
        writer: cache.Writer,
        train: list[tuple[Path, int]],
        test: list[tuple[Path, int]],
        size: tuple[int, int],
        channels: int,
        bad: set[Path],
    ) -> tuple[list[int], int]:
        """Decode `train` then `test` into `writer`; the labels written and how many trained."""
        from PIL import Image

        labels: list[int] = []
        n_train = 0
        for part in (train, test):
            chunk: list[np.ndarray] = []
            for path, label in part:
                if path in bad:
                    continue
                try:
                    with Image.open(path) as opened:
                        chunk.append(image_array(opened, size, channels))
                except Exception as err:
                    self._bad(path, err, bad)
                    continue
                labels.append(label)
                if len(chunk) == DECODE_CHUNK:
                    writer.add(np.stack(chunk))
                    chunk = []
            if chunk:
                writer.add(np.stack(chunk))
            if part is train:
                n_train = len(labels)
        if n_train < 2 or len(labels) == n_train:
            raise DataError(f"{self.root}: too few images could be decoded ({len(labels)})")
        return labels, n_train
