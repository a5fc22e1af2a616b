"""Strict reader for IDX files (the MNIST format), raw or gzipped.

Every malformed file is rejected with a message naming the file and what is wrong, so that
training never starts on garbage.
"""

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from aelab.errors import DataError

UBYTE = 0x08


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
    """Read a whole IDX file of unsigned bytes into a uint8 tensor of the header's shape."""
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read, the file is corrupted ({err})") from None
    shape = _parse_header(path, data[:4] + data[4 : 4 + 4 * data[3]] if len(data) >= 4 else data)
    offset = 4 + 4 * len(shape)
    expected = offset + math.prod(shape)
    if len(data) != expected:
        raise DataError(
            f"{path}: {'truncated' if len(data) < expected else 'has trailing bytes'}: "
            f"the header promises shape {tuple(shape)} ({expected} bytes), the file has {len(data)}"
        )
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).view(*shape)


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
