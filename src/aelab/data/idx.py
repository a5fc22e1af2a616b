"""IDX files (the MNIST format), raw or gzipped: a strict reader, and the source of images
(`IdxSource`) that MNIST, Fashion-MNIST and any folder of the four files are read through.

Every malformed file is rejected with a message naming the file and what is wrong, so that
training never starts on garbage.
"""

import gzip
import logging
import math
import struct
import textwrap
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import torch

from aelab.config import writable_dir_error
from aelab.data.source import SourceImages
from aelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

UBYTE = 0x08
READ_CHUNK = 1 << 20  # bytes read (inflated) at a time


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


SPLITS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Other names a folder of your own may use for the test files.
ALIASES = {"test_images": "test-images-idx3-ubyte", "test_labels": "test-labels-idx1-ubyte"}


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


class IdxSource:
    """The four IDX files of MNIST's layout in `path` (raw or gzipped), read whole into memory.

    `download`: the torchvision dataset class (MNIST, FashionMNIST) that fetches the files when
    they are missing, into `path`, which must then be `<root>/<download>/raw` as torchvision
    lays it out; None: a folder of your own, never downloaded. `system_dirs`: read-only copies
    searched after `path` (Debian's fashion-mnist package). `classes`: the labels' names (None:
    the digits)."""

    def __init__(
        self,
        path: str,
        name: str = "idx",
        download: str | None = None,
        system_dirs: Sequence[str] = (),
        classes: Sequence[str] | None = None,
    ) -> None:
        if not path:
            raise ConfigError(
                f"data.source.path is not set: data={name} needs data.source.path=DIR, a folder "
                "holding the four IDX files"
            )
        self.path = Path(path).expanduser()
        if download is not None and self.path.parts[-2:] != (download, "raw"):
            raise ConfigError(
                f"data.source.path={path!r} must end in {download}/raw, where torchvision's "
                f"{download} puts its files (data.source.download={download})"
            )
        self.name = name
        self.download = download
        self.system_dirs = [Path(d) for d in system_dirs]
        self.classes = list(classes) if classes else [str(digit) for digit in range(10)]

    def find(self) -> dict[str, Path] | None:
        """The four files, raw or gzipped, from `path` or else a system copy; None if absent."""
        for folder in (self.path, *self.system_dirs):
            found = {}
            for split, name in SPLITS.items():
                names = [name, ALIASES.get(split, name)]
                candidates = [folder / n for base in names for n in (base, f"{base}.gz")]
                path = next((p for p in candidates if p.is_file()), None)
                if path is not None:
                    found[split] = path
            if len(found) == len(SPLITS):
                return found
        return None

    def files(self) -> dict[str, Path]:
        found = self.find()
        if found is None:
            raise DataError(
                f"{self.name} not found: {self.path} lacks {', '.join(SPLITS.values())} (raw or "
                ".gz). Place the four IDX files there or point "
                f"{'paths.data_dir' if self.download else 'data.source.path'} to a folder that "
                "has them"
            )
        return found

    def prepare(self, split_seed: int) -> None:
        """Download the raw files with torchvision unless they are already on disk; a file that
        a killed download left half-written is removed and fetched again, never used."""
        if self.download is None:
            self.files()  # a folder of your own is never downloaded: just say what is missing
            return
        missing = f"{self.name} is not under {self.path}"
        found = self.find()
        if found is not None:
            broken = {p: incomplete_reason(p) for p in found.values() if p.parent == self.path}
            broken = {path: reason for path, reason in broken.items() if reason}
            if not broken:
                return
            for path, reason in broken.items():
                log.warning(f"{reason}: removing it and downloading it again")
                path.unlink()
            missing = f"{next(iter(broken.values()))}, so it was removed"
        with removed_if_refused(self.path):
            self._download(self.download, missing)
        self.files()

    def _download(self, dataset: str, missing: str) -> None:
        """torchvision's download of the raw files into `path`, or one line saying why not."""
        import torchvision.datasets

        if error := writable_dir_error("paths.data_dir", self.path):
            raise DataError(f"{missing} and cannot be downloaded: {error}")
        try:
            for train in (True, False):
                getattr(torchvision.datasets, dataset)(
                    str(self.path.parent.parent), train=train, download=True
                )
        except Exception as err:
            # torchvision says "Tried URL, got: REASON" per mirror: the last reason, whole words
            last = " ".join(str(err).split()).rsplit("got: ", 1)[-1]
            reason = textwrap.shorten(last, 160, placeholder=" ...") or type(err).__name__
            raise DataError(
                f"{missing} and downloading it failed ({reason}). "
                f"Offline, copy {', '.join(SPLITS.values())} (raw or .gz) into {self.path}, "
                f"or set paths.data_dir to a folder that has {dataset}/raw/"
            ) from None

    def ready(self, split_seed: int) -> bool:
        found = self.find()
        return found is not None and not any(incomplete_reason(p) for p in found.values())

    def image_shape(self) -> tuple[int, int, int]:
        """(1, height, width), read from the training images' header."""
        shape = read_idx_shape(self.files()["train_images"])
        if len(shape) != 3:
            raise DataError(
                f"{self.files()['train_images']}: expected (N, H, W) images, got {shape}"
            )
        return (1, shape[1], shape[2])

    def load(self, split_seed: int) -> SourceImages:
        """The files read whole; the datamodule draws the validation split (`order`)."""
        arrays = read_checked(self.files())
        train = arrays["train_images"].unsqueeze(1)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
        return SourceImages(
            train,
            arrays["train_labels"].long(),
            arrays["test_images"].unsqueeze(1),
            arrays["test_labels"].long(),
            self.classes,
            order,
        )


@contextmanager
def removed_if_refused(folder: Path) -> Iterator[None]:
    """The folders up to `folder` that the block creates are removed again (those left empty)
    when it fails: a refused download leaves no `<data_dir>/MNIST/raw` behind."""
    folder = folder.absolute()
    new = [p for p in (folder, *folder.parents) if not p.exists()]  # the deepest first
    try:
        yield
    except BaseException:
        for path in new:
            with suppress(OSError):
                path.rmdir()
        raise
