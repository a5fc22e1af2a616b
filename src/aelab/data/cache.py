"""Decoded images kept on disk as one uint8 array, memory-mapped when training reads them.

A source that has to decode images (a folder of PNGs, CelebA's JPEGs) does so once, into
`<name>.u8` (the (N, C, H, W) bytes, nothing else) beside `<name>.json` (the shape, labels, class
names, the split sizes, the fingerprint of what it was made from and what else the source keeps
there: a ground-truth set's factor names, aelab.data.factor_sources). Both are written under
temporary names and renamed, the JSON last, so a cache that a killed run left half-written is
never used. Raw bytes rather than `.npy`: a file that skips undecodable images is cut short by
truncation, with no header to rewrite.

Reading maps the file (pages come in as batches need them) and gives the mapping's pages back to
the kernel after every gather (`MappedImages.release`): the process's resident memory stays one
chunk, not the whole file, and a dataset larger than RAM trains; the pages stay in the page cache,
so the next epoch reads them from memory when they fit there.
"""

import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aelab.data.source import SourceImages
from aelab.errors import DataError

VERSION = 1  # bump when the layout changes: older caches are rebuilt


@dataclass
class CachedArrays:
    """A cache's contents: `images` is a tensor view of the mapped file (training images first,
    in the order the source chose, then the test images)."""

    images: torch.Tensor
    labels: torch.Tensor
    n_train: int
    classes: list[str] | None
    mapping: "MappedImages"
    meta: dict  # the whole JSON, with what the source added (`Writer.finish`'s `extra`)

    def source_images(self) -> SourceImages:
        """The training and test sets as views of the mapped file, the training images already
        in the order the cache was made in (validation first)."""
        n = self.n_train
        images, labels = self.images, self.labels
        return SourceImages(
            images[:n], labels[:n], images[n:], labels[n:], self.classes, None, self.mapping.release
        )


class MappedImages:
    """The mapping under a cache's tensor; `release` drops its resident pages (they are clean:
    nothing is ever written to them)."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        with open(path, "rb") as f:
            # ACCESS_COPY (a private mapping): writable as torch wants, never written back
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.tensor = torch.frombuffer(self.map, dtype=torch.uint8).view(*shape)

    def release(self) -> None:
        """Give the resident pages back; the next read faults them in from the page cache."""
        self.map.madvise(mmap.MADV_DONTNEED)


def paths(stem: Path) -> tuple[Path, Path]:
    """The array file and the JSON of the cache at `stem`."""
    return stem.with_name(stem.name + ".u8"), stem.with_name(stem.name + ".json")


def load(stem: Path, fingerprint: str) -> CachedArrays | None:
    """The cache at `stem` if it is complete and was made from what `fingerprint` describes."""
    array_file, meta_file = paths(stem)
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("version") != VERSION or meta.get("fingerprint") != fingerprint:
            return None
        shape = (len(meta["labels"]), *meta["shape"])
        if array_file.stat().st_size != math.prod(shape) or not shape[0]:
            return None
        mapping = MappedImages(array_file, shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    labels = torch.tensor(meta["labels"], dtype=torch.long)
    return CachedArrays(mapping.tensor, labels, meta["n_train"], meta["classes"], mapping, meta)


class Writer:
    """Appends uint8 images (n, C, H, W) to a new cache at `stem`; `finish` makes it visible.

    Given `count`, the file is made that long at once and `put` writes images at any rows: a
    source read as a stream (dSprites' 3 GB) goes straight to the order `split_seed` gives."""

    def __init__(self, stem: Path, shape: tuple[int, int, int], count: int | None = None) -> None:
        self.stem = stem
        self.shape = tuple(shape)
        self.array_file, self.meta_file = paths(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.array_file.with_name(f"{self.array_file.name}.{os.getpid()}.partial")
        self.file = open(self.partial, "w+b")  # noqa: SIM115 (closed by finish or abort)
        self.count = 0
        self.map: mmap.mmap | None = None
        if count is not None:
            self.file.truncate(count * math.prod(self.shape))
            self.map = mmap.mmap(self.file.fileno(), 0)

    def _check(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images {images.dtype} {images.shape}, expected uint8 {self.shape}")

    def add(self, images: np.ndarray) -> None:
        self._check(images)
        self.file.write(np.ascontiguousarray(images).data)
        self.count += len(images)

    def put(self, rows: np.ndarray, images: np.ndarray) -> None:
        """`images` at `rows` of a cache whose `count` was given; the written pages are given
        back to the kernel at once, so the process holds one chunk, not the file."""
        self._check(images)
        if self.map is None:
            raise ValueError("put writes into a cache whose count was given to Writer")
        array = np.frombuffer(self.map, dtype=np.uint8).reshape(-1, *self.shape)
        array[rows] = images
        del array  # the mapping can close only when no array looks into it
        self.map.flush()
        self.map.madvise(mmap.MADV_DONTNEED)
        self.count += len(rows)

    def _close(self) -> None:
        if self.map is not None:
            self.map.close()
        self.file.close()

    def finish(
        self,
        fingerprint: str,
        labels: list[int],
        n_train: int,
        classes: list[str] | None,
        extra: dict | None = None,
    ) -> None:
        """Make the cache visible; `extra`: what else the source keeps in its JSON."""
        self._close()
        if self.count != len(labels):
            raise ValueError(f"{self.count} images written for {len(labels)} labels")
        os.replace(self.partial, self.array_file)
        meta = {"version": VERSION, "fingerprint": fingerprint, "shape": list(self.shape)}
        meta |= {"n_train": n_train, "classes": classes, "labels": labels} | (extra or {})
        partial = self.meta_file.with_name(f"{self.meta_file.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(meta))
        os.replace(partial, self.meta_file)

    def abort(self) -> None:
        self._close()
        self.partial.unlink(missing_ok=True)


class CachedSource:
    """What the sources that decode their images once into a cache share (a folder of images,
    torchvision's datasets): `ready` finds an up-to-date cache at `stem` (its `fingerprint`
    names what it was made from) and keeps it mapped, `load` serves it."""

    name: str
    stem: Path
    _cached: CachedArrays | None = None

    def fingerprint(self, split_seed: int) -> str:
        raise NotImplementedError

    def ready(self, split_seed: int) -> bool:
        self._cached = load(self.stem, self.fingerprint(split_seed))
        return self._cached is not None

    def load(self, split_seed: int) -> SourceImages:
        if not self.ready(split_seed):
            raise DataError(f"{self.stem}: no up-to-date cache of {self.name}; prepare makes it")
        assert self._cached is not None  # ready() found it
        return self._cached.source_images()

    def cached_shape(self) -> tuple[int, int, int] | None:
        """(channels, height, width) of the cache that `ready` found, else None."""
        if self._cached is None:
            return None
        channels, height, width = self._cached.images.shape[1:]
        return channels, height, width
