"""Ground-truth factor datasets: images together with the factor values that made them, for the
disentanglement metrics (aelab.evaluation.disentanglement). Pure functions and one small class;
nothing here trains on the factors.

- `generate_shapes`: a dSprites-like set drawn in code (3 shapes x 6 scales x 10 orientations x
  16 x 16 positions at 32x32 by default), every factor combination once.
- `read_dsprites` / `iter_dsprites_images` / `read_dsprites_factors`: DeepMind's
  `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`, without its single-valued colour factor.
- `read_factor_npz`: a ground-truth set of one's own (3D Shapes, MPI3D, ...) as an `.npz` with
  `images`, `factors`, `factor_names` and `factor_sizes`.

How the generated shapes differ from dSprites: 32x32 instead of 64x64 pixels; 16 x 16 positions
(one pixel apart) instead of 32 x 32; 10 orientations instead of 40, spread over each shape's own
period of rotational symmetry (square 90 degrees, ellipse 180, heart 360) instead of 360 degrees
for every shape, so that no two orientation classes of a shape are the same image (in dSprites a
square at 0 and at 90 degrees is); edges antialiased (grey levels from `supersample`^2 samples per
pixel) unless `supersample=1`, where dSprites is binary; pixels in [0, 255] like every aelab
source (dSprites stores 0 and 1). No randomness: the same arguments give the same bytes.
"""

import math
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

import numpy as np

from aelab.errors import ConfigError, DataError

SHAPES = ("square", "ellipse", "heart")
SHAPE_PERIODS = (90.0, 180.0, 360.0)  # degrees of rotation after which each shape looks the same
SHAPE_FACTORS = ("shape", "scale", "orientation", "x", "y")

DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = f"https://github.com/google-deepmind/dsprites-dataset/raw/master/{DSPRITES_FILE}"
DSPRITES_FACTORS = ("shape", "scale", "orientation", "x", "y")
DSPRITES_SIZES = (3, 6, 40, 32, 32)  # latents_classes' columns after colour (which has 1 value)


@dataclass(frozen=True, eq=False)
class FactorImages:
    """Images (N, C, H, W) uint8 in [0, 255] and their factors (N, F) int64 class indices, with
    each factor's name and number of values. `origin` (a file, "generated shapes") names the set
    in error messages. Sampling images by factor values (the FactorVAE score) needs every
    combination of factor values exactly once, in any order."""

    images: np.ndarray
    factors: np.ndarray
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    origin: str = "factor images"

    def __post_init__(self) -> None:
        _check_factor_images(self)

    def __len__(self) -> int:
        return len(self.factors)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` factor vectors (n, F), each factor uniform over its values."""
        return rng.integers(0, self.sizes, size=(n, len(self.sizes)), dtype=np.int64)

    def index(self, factors: np.ndarray) -> np.ndarray:
        """The rows of `images` whose factors are `factors` (n, F)."""
        keys = np.ravel_multi_index(tuple(np.asarray(factors).T), self.sizes)
        return keys if self._rows is None else self._rows[keys]

    @cached_property
    def _rows(self) -> np.ndarray | None:
        """Row of each factor combination by its mixed-radix number (None: rows are already in
        that order, as in dSprites and the generated shapes)."""
        keys = np.ravel_multi_index(tuple(self.factors.T), self.sizes)
        combinations = math.prod(self.sizes)
        if len(keys) == combinations and np.array_equal(keys, np.arange(combinations)):
            return None
        rows = np.full(combinations, -1, dtype=np.int64)
        rows[keys] = np.arange(len(keys))
        missing = int((rows < 0).sum())
        if missing or len(keys) != combinations:
            raise DataError(
                f"{self.origin}: {len(keys)} images for {combinations} factor combinations "
                f"({missing} without an image); drawing images by factor values needs every "
                "combination exactly once"
            )
        return rows


def _check_factor_images(data: FactorImages) -> None:
    """One DataError line naming the set and what is wrong with its arrays."""
    images, factors, where = data.images, data.factors, data.origin
    problem = None
    if images.dtype != np.uint8 or images.ndim != 4:
        problem = f"images must be uint8 (N, C, H, W), not {images.dtype} {images.shape}"
    elif factors.ndim != 2 or not np.issubdtype(factors.dtype, np.integer):
        problem = f"factors must be integers (N, F), not {factors.dtype} {factors.shape}"
    elif len(factors) != len(images):
        problem = f"{len(images)} images but {len(factors)} rows of factors"
    elif not len(data.names) == len(data.sizes) == factors.shape[1]:
        problem = (
            f"{factors.shape[1]} factor columns, {len(data.names)} names, "
            f"{len(data.sizes)} sizes: they must agree"
        )
    elif min(data.sizes, default=0) < 2:
        one = data.names[int(np.argmin(data.sizes))] if data.sizes else "none"
        problem = f"factor {one!r} has fewer than 2 values: drop it (MIG divides by its entropy)"
    elif len(factors) and ((factors < 0).any() or (factors >= np.array(data.sizes)).any()):
        column = int(np.argmax((factors < 0).any(0) | (factors >= np.array(data.sizes)).any(0)))
        problem = (
            f"factor {data.names[column]!r} has values outside 0..{data.sizes[column] - 1} "
            "(factors are class indices below factor_sizes)"
        )
    if problem:
        raise DataError(f"{where}: {problem}")


def generate_shapes(
    size: int = 32,
    scales: int = 6,
    orientations: int = 10,
    positions: int = 16,
    supersample: int = 4,
) -> FactorImages:
    """Square, ellipse and heart at `scales` sizes (half to full), `orientations` angles over
    each shape's period of symmetry and `positions` x `positions` places one pixel apart: every
    combination once, rows in mixed-radix order of (shape, scale, orientation, x, y), y fastest.
    Drawn once per (shape, scale, orientation) and pasted at each position."""
    check_shape_grid(size, scales, orientations, positions, supersample)
    side = size - positions + 1  # the template; its centre is one pixel's centre
    templates = _shape_templates(side, scales, orientations, supersample)
    grid = (len(SHAPES), scales, orientations, positions, positions)
    images = np.zeros((*grid, 1, size, size), dtype=np.uint8)
    for x in range(positions):
        for y in range(positions):
            images[:, :, :, x, y, 0, y : y + side, x : x + side] = templates
    factors = np.indices(grid, dtype=np.int64).reshape(len(grid), -1).T
    return FactorImages(
        images.reshape(-1, 1, size, size), factors, SHAPE_FACTORS, grid, "generated shapes"
    )


def check_shape_grid(
    size: int, scales: int, orientations: int, positions: int, supersample: int, key: str = ""
) -> None:
    """generate_shapes' arguments, checked before anything is drawn: one ConfigError line naming
    the argument (as `key` + its name: a config's `data.source.`)."""
    for name, value in (("scales", scales), ("orientations", orientations)):
        if value < 2:
            raise ConfigError(f"{key}{name}={value}: needs at least 2 values")
    if not 2 <= positions <= size - 4:
        raise ConfigError(
            f"{key}positions={positions}: must be 2 to size-4={size - 4} ({key}size={size})"
        )
    if supersample < 1:
        raise ConfigError(f"{key}supersample={supersample}: must be at least 1 (1: binary pixels)")


def _shape_templates(side: int, scales: int, orientations: int, supersample: int) -> np.ndarray:
    """(shapes, scales, orientations, side, side) uint8: each shape's coverage of each pixel,
    from supersample^2 points per pixel; the largest shape just fits the template."""
    fine = (np.arange(side * supersample) + 0.5) / supersample - side / 2
    v, u = np.meshgrid(fine, fine, indexing="ij")  # rows down, columns right, from the centre
    radius = np.linspace(0.5, 1.0, scales)[:, None, None, None] * 0.95 * side / 2
    out = np.empty((len(SHAPES), scales, orientations, side, side), dtype=np.uint8)
    for s, (shape, period) in enumerate(zip(SHAPES, SHAPE_PERIODS, strict=True)):
        angle = np.deg2rad(np.arange(orientations) * period / orientations)[:, None, None]
        cos, sin = np.cos(angle), np.sin(angle)
        x = (cos * u + sin * v) / radius  # the pixel in the shape's frame (unit disk)
        y = (cos * v - sin * u) / radius
        covered = _inside(shape, x, -y).reshape(
            scales, orientations, side, supersample, side, supersample
        )
        out[s] = np.round(covered.mean(axis=(3, 5)) * 255).astype(np.uint8)
    return out


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether (x, y) (y up) lies in `shape`, each scaled to fit the unit disk."""
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 1 / math.sqrt(2)
    if shape == "ellipse":
        return x**2 + (2 * y) ** 2 <= 1
    hx, hy = 1.25 * x, 1.25 * y + 0.25  # (x^2 + y^2 - 1)^3 <= x^2 y^3 fits a disk of radius 1.25
    return (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0


def _npz_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """`keys` of an .npz, without unpickling anything; one DataError line for a file that is
    absent, not an .npz, lacks a key or stores one as a pickle."""
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in keys if key not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: has no {', '.join(missing)} (it holds {', '.join(npz.files)})"
                )
            return {key: npz[key] for key in keys}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    except ValueError as err:
        raise DataError(f"{path}: cannot be read without unpickling ({err})") from None


def read_dsprites_factors(path: Path) -> np.ndarray:
    """dSprites' latents_classes (N, 6) without the colour column: (N, 5) int64 class indices of
    DSPRITES_FACTORS, checked against DSPRITES_SIZES."""
    classes = _npz_arrays(path, ("latents_classes",))["latents_classes"]
    if classes.ndim != 2 or classes.shape[1] != 6 or not np.issubdtype(classes.dtype, np.integer):
        raise DataError(
            f"{path}: latents_classes must be integers (N, 6) (colour, shape, scale, "
            f"orientation, x, y), not {classes.dtype} {classes.shape}"
        )
    if len(classes) and (classes[:, 0] != classes[0, 0]).any():
        raise DataError(f"{path}: latents_classes' colour column has several values, dSprites' 1")
    factors = classes[:, 1:].astype(np.int64)
    too_big = (factors < 0) | (factors >= np.array(DSPRITES_SIZES))
    if too_big.any():
        column = int(np.argmax(too_big.any(0)))
        raise DataError(
            f"{path}: latents_classes' {DSPRITES_FACTORS[column]} column has values outside "
            f"0..{DSPRITES_SIZES[column] - 1}"
        )
    return factors


def iter_dsprites_images(path: Path, chunk: int = 65536) -> Iterator[np.ndarray]:
    """dSprites' imgs in chunks of (n, 1, H, W) uint8 in {0, 255}, decompressed as they are read
    (the whole array is 3 GB): for writing them into a cache without holding them all. Each
    chunk is a new array (the caller may keep it)."""
    with _npy_member(path, "imgs") as (stream, shape, dtype):
        if dtype != np.uint8 or len(shape) != 3:
            raise DataError(f"{path}: imgs must be uint8 (N, H, W), not {dtype} {shape}")
        n, height, width = shape
        for start in range(0, n, chunk):
            pixels = np.empty((min(chunk, n - start), 1, height, width), dtype=np.uint8)
            if not _read_into(stream, pixels.data.cast("B")):
                raise DataError(f"{path}: imgs ends after {start} of {n} images")
            if pixels.max(initial=0) > 1:
                raise DataError(f"{path}: imgs holds pixel values above 1; dSprites' are 0 or 1")
            yield np.multiply(pixels, 255, out=pixels)


def _read_into(stream: IO[bytes], buffer: memoryview, piece: int = 1 << 20) -> bool:
    """Fill `buffer` from `stream` a megabyte at a time (one read of the whole buffer would
    grow one bytes object piece by piece: minutes and twice the memory for 256 MB); False if
    the stream ends first."""
    filled = 0
    while filled < len(buffer):
        data = stream.read(min(piece, len(buffer) - filled))
        if not data:
            return False
        buffer[filled : filled + len(data)] = data
        filled += len(data)
    return True


@contextmanager
def _npy_member(path: Path, key: str) -> Iterator[tuple[IO[bytes], tuple[int, ...], np.dtype]]:
    """The open stream of the .npy member `key` of an .npz, past its header, with the array's
    shape and dtype."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with archive, _opened(archive, path, key) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }[version]
            shape, fortran, dtype = read_header(stream)
        except (KeyError, ValueError, OSError) as err:
            raise DataError(f"{path}: {key} is not a readable .npy array ({err!r})") from None
        if fortran:
            raise DataError(f"{path}: {key} is stored in Fortran order, not C order")
        yield stream, shape, dtype


def _opened(archive: zipfile.ZipFile, path: Path, key: str) -> IO[bytes]:
    """The member `key`.npy of an open .npz."""
    try:
        return archive.open(f"{key}.npy")
    except KeyError:
        raise DataError(
            f"{path}: has no {key} (it holds {', '.join(archive.namelist())})"
        ) from None


def read_dsprites(path: Path) -> FactorImages:
    """The whole dSprites file in memory (3 GB for the real one; a cache should map
    iter_dsprites_images' chunks instead)."""
    factors = read_dsprites_factors(path)
    images = np.concatenate(list(iter_dsprites_images(path)))
    if len(images) != len(factors):
        raise DataError(f"{path}: {len(images)} imgs but {len(factors)} latents_classes rows")
    return FactorImages(images, factors, DSPRITES_FACTORS, DSPRITES_SIZES, str(path))


def read_factor_npz(path: Path) -> FactorImages:
    """A ground-truth set of one's own: an .npz (np.savez or np.savez_compressed) with
    `images` uint8 (N, H, W) or (N, C, H, W), C 1 or 3, values 0-255; `factors` (N, F)
    integer class indices; `factor_names` (F,) strings; `factor_sizes` (F,) integers, each at
    least 2. Strings as a str array (not objects: nothing is unpickled)."""
    arrays = _npz_arrays(path, ("images", "factors", "factor_names", "factor_sizes"))
    images, names, sizes = arrays["images"], arrays["factor_names"], arrays["factor_sizes"]
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"{path}: images must be (N, H, W) or (N, C, H, W) with C 1 or 3, not "
            f"{images.shape} (channels last? move them to axis 1)"
        )
    if names.ndim != 1 or names.dtype.kind != "U":
        raise DataError(f"{path}: factor_names must be a 1-D str array, not {names.dtype}")
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer):
        raise DataError(f"{path}: factor_sizes must be a 1-D integer array, not {sizes.dtype}")
    return FactorImages(
        images,
        arrays["factors"],
        tuple(str(name) for name in names),
        tuple(int(s) for s in sizes),
        str(path),
    )
