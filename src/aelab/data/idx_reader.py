"""IDX files (the MNIST format), raw or gzipped, read strictly: every malformed file is rejected
with a message naming the file and what is wrong, so that training never starts on garbage."""

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from aelab.errors import DataError

UBYTE = 0x08
READ_CHUNK = 1 << 20  # bytes read (inflated) at a time

SPLITS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Other names a folder of your own may use for the test files.
ALIASES = {"test_images": "test-images-idx3-ubyte", "test_labels": "test-labels-idx1-ubyte"}


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four files of MNIST's layout in `folder`, raw or gzipped; None if one is absent."""
    found = {}
    for split, name in SPLITS.items():
        names = [name, ALIASES.get(split, name)]
        candidates = [folder / n for base in names for n in (base, f"{base}.gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found[split] = path
    return found if len(found) == len(SPLITS) else None


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _parse_header(path: Path, head: bytes) -> tuple[int, ...]:
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] != UBYTE or head[3] == 0:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file (magic number 0x{head[:4].hex()}, "
            "expected 0x00000801 for labels or 0x00000803 for images)"
        )
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({len(head)} bytes)")
    return struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])


def read_idx_shape(path: Path) -> tuple[int, ...]:
    """Read only the header: the shape of the array the file holds."""
    try:
        with _open(path) as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read ({err})") from None
    return _parse_header(path, head)


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the images an IDX file holds, read from its header."""
    shape = read_idx_shape(path)
    if len(shape) != 3:
        raise DataError(f"{path}: expected (N, H, W) images, got {shape}")
    return shape[1], shape[2]


def read_idx(path: Path) -> torch.Tensor:
    """Read a whole IDX file of unsigned bytes into a uint8 tensor of the header's shape.

    Nothing larger than the header's promise is ever allocated: a raw file's size is checked
    against it before its data are read, and a gzipped one is inflated a chunk at a time and
    stopped one byte past it (a gzip bomb, or a header that claims billions of images, is one
    error line, not an out-of-memory kill).
    """
    try:
        with _open(path) as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
            shape = _parse_header(path, head)
            expected = math.prod(shape)
            if expected == 0:
                raise DataError(f"{path}: holds no data (the header gives shape {shape})")
            if path.suffix != ".gz":
                _check_size(path, shape, len(head), path.stat().st_size - len(head))
            data = bytearray()
            while len(data) <= expected:
                chunk = f.read(min(READ_CHUNK, expected + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read, the file is corrupted ({err})") from None
    _check_size(path, shape, len(head), len(data))
    return torch.frombuffer(data, dtype=torch.uint8).view(*shape)


def _check_size(path: Path, shape: tuple[int, ...], header: int, size: int) -> None:
    expected = math.prod(shape)
    if size != expected:
        raise DataError(
            f"{path}: {'truncated' if size < expected else 'has trailing bytes'}: the header "
            f"promises shape {tuple(shape)} ({header + expected} bytes), the file has "
            f"{header + size}{' or more' if size > expected and path.suffix == '.gz' else ''}"
        )


def incomplete_reason(path: Path) -> str | None:
    """Why a raw IDX file is shorter or longer than its header says (a half-written download),
    or None. Only reads the header; gzipped files are checked when they are read."""
    if path.suffix == ".gz":
        return None
    try:
        shape = read_idx_shape(path)
    except DataError as err:
        return str(err)
    expected = 4 + 4 * len(shape) + math.prod(shape)
    size = path.stat().st_size
    return None if size == expected else f"{path}: {size} bytes, its header promises {expected}"


def read_checked(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Read the four IDX files and make sure they belong together, naming the file at fault."""
    arrays = {split: read_idx(path) for split, path in files.items()}
    for split, ndim, what in [
        ("train_images", 3, "images (N, H, W)"),
        ("test_images", 3, "images (N, H, W)"),
        ("train_labels", 1, "labels (N,)"),
        ("test_labels", 1, "labels (N,)"),
    ]:
        if arrays[split].ndim != ndim:
            raise DataError(f"{files[split]}: expected {what}, got {tuple(arrays[split].shape)}")
    for part in ("train", "test"):
        images, labels = f"{part}_images", f"{part}_labels"
        if len(arrays[images]) != len(arrays[labels]):
            raise DataError(
                f"{files[images]} holds {len(arrays[images])} images but "
                f"{files[labels]} holds {len(arrays[labels])} labels"
            )
    train, test = arrays["train_images"], arrays["test_images"]
    if len(train) < len(test):
        raise DataError(
            f"{files['train_images']} holds fewer images ({len(train)}) than "
            f"{files['test_images']} ({len(test)}): are train and test swapped?"
        )
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{files['test_images']}: images of size {tuple(test.shape[1:])}, "
            f"but the training images are {tuple(train.shape[1:])}"
        )
    return arrays
