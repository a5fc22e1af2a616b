"""Ground-truth factor datasets as sources of images (aelab.data.source.GroundTruthSource):
`data=shapes` (aelab.data.factors.generate_shapes), `data=dsprites` (DeepMind's file) and
`data=factor_npz` (an .npz of one's own, aelab.data.factors.read_factor_npz).

Each is written once into the uint8 cache of aelab.data.cache under `paths.cache_dir`
(memory-mapped, as data=folder's), its factors beside it in `<stem>.factors.npy` (their digest in
the cache's JSON, so that a file left by another build is never paired with these images).
`test_fraction` (0.1) of all images, drawn by `data.split_seed`, is the test set; the training
file comes in the order `split_seed` gives (validation: its first `data.val_size`), so every set
and the ground truth are views of one mapped file. The labels are one factor, `label_factor`
(`shape` for the shapes and dSprites: classes square, ellipse, heart), so that the linear probes
and class-coloured pictures keep working; null: unlabelled. Training reads neither labels nor
factors: the datamodule's `ground_truth` serves the factors to the disentanglement metrics.
"""

import hashlib
import http.client
import json
import logging
import os
import shutil
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from aelab.config import writable_dir_error
from aelab.data import cache
from aelab.data.download import removed_if_refused
from aelab.data.factors import (
    DSPRITES_FACTORS,
    DSPRITES_FILE,
    DSPRITES_SIZES,
    DSPRITES_URL,
    SHAPE_FACTORS,
    SHAPES,
    FactorImages,
    check_shape_grid,
    generate_shapes,
    iter_dsprites_images,
    read_dsprites_factors,
    read_factor_npz,
)
from aelab.data.source import SourceImages
from aelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SHAPES_VERSION = 1  # bump when generate_shapes draws differently: older caches are rebuilt
DSPRITES_CHUNK = 16384  # dSprites images decompressed and written at a time (64 MB)


@dataclass
class Contents:
    """What a ground-truth source is made of: factors (N, F) with their names and sizes, and
    the images in the factors' order, as chunks of uint8 (n, C, H, W)."""

    factors: np.ndarray
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    origin: str
    chunks: Iterator[np.ndarray]


def split_rows(n: int, test_fraction: float, split_seed: int) -> tuple[np.ndarray, int]:
    """Each image's row in the cache, and how many are training images: `test_fraction` of
    them, drawn by `split_seed`, last (in their own order); the others first, in the order
    `split_seed` gives (validation is the first of them)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).numpy()
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 2:
        raise DataError(f"{n} images: too few for a test set and at least 2 training images")
    rows = np.empty(n, dtype=np.int64)
    rows[order[n_test:]] = np.arange(n - n_test)
    rows[np.sort(order[:n_test])] = np.arange(n - n_test, n)
    return rows, n - n_test


class FactorSource(cache.CachedSource):
    """What the ground-truth sources share: the split, the cache with the factors beside it,
    the labels and `ground_truth`. A subclass says what the cache is made from (`settings`) and
    gives its `contents`."""

    # the classes of a label factor, by its name (others: `<factor>=<value>`)
    CLASS_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, stem: Path, label_factor: str | None, test_fraction: float) -> None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"data.source.test_fraction={test_fraction} must be in (0, 1)")
        self.stem = stem
        self.factor_file = stem.with_name(stem.name + ".factors.npy")
        self.label_factor = label_factor
        self.test_fraction = test_fraction
        self._factors: np.ndarray | None = None
        self._seed: int | None = None  # the split_seed of the cache that `ready` found
        self._truth: FactorImages | None = None

    def settings(self) -> Any:
        """What the cache is made from, besides the split (JSON-serialisable)."""
        raise NotImplementedError

    def contents(self) -> Contents:
        raise NotImplementedError

    def fingerprint(self, split_seed: int) -> str:
        settings = [type(self).__name__, self.settings(), self.test_fraction, split_seed]
        return hashlib.sha1(json.dumps(settings).encode()).hexdigest()

    def check_label(self, names: tuple[str, ...], origin: str) -> int | None:
        """The column of `label_factor` among `names` (None: unlabelled)."""
        if self.label_factor is None:
            return None
        if self.label_factor not in names:
            raise ConfigError(
                f"data.source.label_factor={self.label_factor!r} is not a factor of {origin} "
                f"({', '.join(names)}); name one of them, or null for no labels"
            )
        return names.index(self.label_factor)

    def ready(self, split_seed: int) -> bool:
        """An up-to-date cache and its factors, kept mapped and read."""
        self._truth = self._factors = None
        if not super().ready(split_seed):
            return False
        assert self._cached is not None  # ready() found it
        meta = self._cached.meta
        try:
            factors = np.load(self.factor_file, allow_pickle=False)
        except (OSError, ValueError):
            factors = None
        if factors is None or _digest(factors) != meta.get("factors_sha1"):
            self._cached = None
            return False
        self._factors, self._seed = factors, split_seed
        return True

    def prepare(self, split_seed: int) -> None:
        """Write the images into the cache, in the order of the split, unless it is there."""
        if self.ready(split_seed):
            return
        contents = self.contents()
        self.check_label(contents.names, contents.origin)
        rows, n_train = split_rows(len(contents.factors), self.test_fraction, split_seed)
        log.info(
            f"Writing the {len(rows)} images of {contents.origin} into "
            f"{cache.paths(self.stem)[0]} (once; later runs map that file)"
        )
        writer = self._write(contents, rows)
        try:
            placed = np.empty_like(contents.factors, dtype=np.int64)
            placed[rows] = contents.factors
            partial = self.factor_file.with_name(f"{self.factor_file.name}.{os.getpid()}.npy")
            np.save(partial, placed)
            os.replace(partial, self.factor_file)
            extra = {"factor_names": list(contents.names), "factor_sizes": list(contents.sizes)}
            extra |= {"origin": contents.origin, "factors_sha1": _digest(placed)}
            labels = [-1] * len(rows)  # the label factor is chosen when the cache is read
            writer.finish(self.fingerprint(split_seed), labels, n_train, None, extra)
        except BaseException:
            writer.abort()
            raise
        self.ready(split_seed)

    def _write(self, contents: Contents, rows: np.ndarray) -> cache.Writer:
        """Every chunk of images at its rows of a new cache (not yet finished)."""
        writer: cache.Writer | None = None
        n, end = len(rows), 0
        try:
            for images in contents.chunks:
                end += len(images)
                if end > n:
                    break
                writer = writer or cache.Writer(self.stem, images.shape[1:], count=n)
                writer.put(rows[end - len(images) : end], images)
            if end != n or writer is None:
                counted = f"more than {n}" if end > n else str(end)
                raise DataError(f"{contents.origin}: {counted} images for {n} rows of factors")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return writer

    def load(self, split_seed: int) -> SourceImages:
        """The cache's sets, labelled by `label_factor`."""
        images = super().load(split_seed)
        assert self._cached is not None and self._factors is not None  # load() readied them
        meta = self._cached.meta
        column = self.check_label(tuple(meta["factor_names"]), meta["origin"])
        if column is None:
            labels, classes = torch.full((len(self._factors),), -1, dtype=torch.long), None
        else:
            labels = torch.from_numpy(np.ascontiguousarray(self._factors[:, column]))
            size = meta["factor_sizes"][column]
            default = [f"{self.label_factor}={value}" for value in range(size)]
            classes = list(self.CLASS_NAMES.get(meta["factor_names"][column], default))
        n = len(images.train)
        return replace(images, train_labels=labels[:n], test_labels=labels[n:], classes=classes)

    def ground_truth(self, split_seed: int) -> FactorImages:
        """Every image of the cache with its factors (the GroundTruthSource contract): views of
        the mapping that `load` serves."""
        stale = self._factors is None or self._seed != split_seed
        if stale and not self.ready(split_seed):
            raise DataError(f"{self.stem}: no up-to-date cache of {self.name}; prepare makes it")
        assert self._cached is not None and self._factors is not None  # ready() found them
        if self._truth is None:
            meta = self._cached.meta
            self._truth = FactorImages(
                self._cached.images.numpy(),
                self._factors,
                tuple(meta["factor_names"]),
                tuple(meta["factor_sizes"]),
                meta["origin"],
            )
        return self._truth


def _digest(factors: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(factors, dtype=np.int64).data).hexdigest()


def _file_settings(path: Path) -> list | None:
    """A file's absolute path, size and modification time (None: absent)."""
    if not path.is_file():
        return None
    stat = path.stat()
    return [str(path.absolute()), stat.st_size, stat.st_mtime_ns]


class ShapesSource(FactorSource):
    """`data=shapes`: aelab.data.factors.generate_shapes' images (grey: antialiased edges;
    `supersample=1`: binary), their factors shape, scale, orientation, x, y."""

    name = "shapes"
    CLASS_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"shape": SHAPES}

    def __init__(
        self,
        cache_dir: str,
        size: int = 32,
        scales: int = 6,
        orientations: int = 10,
        positions: int = 16,
        supersample: int = 4,
        label_factor: str | None = "shape",
        test_fraction: float = 0.1,
    ) -> None:
        check_shape_grid(size, scales, orientations, positions, supersample, "data.source.")
        self.grid = {"size": size, "scales": scales, "orientations": orientations}
        self.grid |= {"positions": positions, "supersample": supersample}
        grid = f"{size}px-{scales}x{orientations}x{positions}x{positions}-ss{supersample}"
        super().__init__(
            Path(cache_dir).expanduser() / f"shapes-{grid}", label_factor, test_fraction
        )
        self.check_label(SHAPE_FACTORS, "data=shapes")

    def settings(self) -> Any:
        return [SHAPES_VERSION, self.grid]

    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.grid["size"], self.grid["size"])

    def contents(self) -> Contents:
        shapes = generate_shapes(**self.grid)
        return Contents(
            shapes.factors, shapes.names, shapes.sizes, shapes.origin, iter([shapes.images])
        )


class DspritesSource(FactorSource):
    """`data=dsprites`: DeepMind's dSprites, `<data_dir>/dsprites/` + DSPRITES_FILE, downloaded
    there when absent and `download` is set; its 737,280 binary 64x64 images are decompressed
    chunk by chunk into the cache (3 GB, never all in memory); factors shape, scale,
    orientation, x, y (colour, which has one value, dropped)."""

    name = "dsprites"
    # dSprites' shapes in its order: square, ellipse, heart
    CLASS_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"shape": SHAPES}

    def __init__(
        self,
        data_dir: str,
        cache_dir: str,
        download: bool = True,
        label_factor: str | None = "shape",
        test_fraction: float = 0.1,
    ) -> None:
        self.file = Path(data_dir).expanduser() / "dsprites" / DSPRITES_FILE
        self.download = download
        super().__init__(Path(cache_dir).expanduser() / "dsprites", label_factor, test_fraction)
        self.check_label(DSPRITES_FACTORS, "data=dsprites")

    def settings(self) -> Any:
        return _file_settings(self.file)

    def image_shape(self) -> tuple[int, int, int]:
        return self.cached_shape() or (1, 64, 64)

    def contents(self) -> Contents:
        self.fetch()
        factors = read_dsprites_factors(self.file)
        chunks = iter_dsprites_images(self.file, DSPRITES_CHUNK)
        return Contents(factors, DSPRITES_FACTORS, DSPRITES_SIZES, str(self.file), chunks)

    def fetch(self) -> None:
        """The file, downloaded from DSPRITES_URL when absent, or one line saying where to get
        it."""
        if self.file.is_file():
            return
        folder = self.file.parent
        missing = f"{DSPRITES_FILE} is not in {folder}"
        by_hand = (
            f"download {DSPRITES_URL} into {folder}/, or set paths.data_dir to a folder that "
            f"has dsprites/{DSPRITES_FILE}"
        )
        if not self.download:
            raise DataError(f"{missing} (data.source.download=false): {by_hand}")
        with removed_if_refused(folder):
            if error := writable_dir_error("paths.data_dir", folder):
                raise DataError(f"{missing} and cannot be downloaded: {error}")
            try:
                download_file(DSPRITES_URL, self.file)
            except (OSError, http.client.HTTPException) as err:
                reason = textwrap.shorten(" ".join(str(err).split()), 160, placeholder=" ...")
                raise DataError(
                    f"{missing} and downloading it failed ({reason or type(err).__name__}). "
                    f"Offline, {by_hand}"
                ) from None


def download_file(url: str, path: Path) -> None:
    """`url` into `path`, through a partial file renamed when complete."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    log.info(f"Downloading {url} into {path}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class FactorNpzSource(FactorSource):
    """`data=factor_npz data.source.path=FILE.npz`: a ground-truth set of one's own (3D Shapes,
    MPI3D, ...) in read_factor_npz's layout (images, factors, factor_names, factor_sizes); read
    whole once, when its cache is made. `name` (default: the file's stem) keys what is computed
    once per dataset."""

    def __init__(
        self,
        path: str,
        cache_dir: str,
        name: str | None = None,
        label_factor: str | None = None,
        test_fraction: float = 0.1,
    ) -> None:
        if not path:
            raise ConfigError(
                "data.source.path is not set: data=factor_npz needs data.source.path=FILE.npz"
            )
        self.file = Path(path).expanduser()
        self.name = name or self.file.stem
        digest = hashlib.sha1(str(self.file.absolute()).encode()).hexdigest()[:16]
        stem = Path(cache_dir).expanduser() / f"factors-{digest}"
        super().__init__(stem, label_factor, test_fraction)

    def settings(self) -> Any:
        return _file_settings(self.file)

    def image_shape(self) -> tuple[int, int, int]:
        shape = self.cached_shape()
        if shape is None:
            raise DataError(f"{self.file}: its shape is read from its cache; prepare makes it")
        return shape

    def contents(self) -> Contents:
        data = read_factor_npz(self.file)
        return Contents(data.factors, data.names, data.sizes, data.origin, iter([data.images]))
