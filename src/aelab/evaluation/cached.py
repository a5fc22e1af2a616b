"""Results that depend only on the data (the feature classifier, the pixel baselines), kept in
`paths.cache_dir` under a digest of their inputs, so the many jobs of a sweep compute them once."""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from aelab.errors import DataError


def digest(settings: object, *tensors: torch.Tensor) -> str:
    """A short hash of `settings` (by its repr) and the tensors' shapes and values."""
    hashed = hashlib.sha256(repr(settings).encode())
    for tensor in tensors:
        hashed.update(repr(tuple(tensor.shape)).encode())
        hashed.update(tensor.contiguous().cpu().numpy().tobytes())
    return hashed.hexdigest()[:16]


def cached_numbers(path: Path, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The numbers kept in the JSON file `path`, or `compute()`'s, written there (atomically)."""
    from aelab.checkpoints import write_atomically

    if path.is_file():
        try:
            return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as err:
            raise DataError(f"{path}: not a readable cache file ({err}); delete it") from err
    numbers = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(numbers, indent=2).encode())
    return numbers
