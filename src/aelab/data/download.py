"""MNIST's and Fashion-MNIST's IDX files downloaded by torchvision, or one line saying why not; a
file that a killed download left half-written is removed and fetched again, never used."""

import logging
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from aelab.config import writable_dir_error
from aelab.data.idx_reader import SPLITS, incomplete_reason
from aelab.errors import DataError

log = logging.getLogger(__name__)


def download_idx(dataset: str, folder: Path, name: str, found: dict[str, Path] | None) -> None:
    """torchvision's `dataset` (MNIST, FashionMNIST) into `folder` (`<root>/<dataset>/raw`),
    unless `found`, the four files, are complete; those of them in `folder` that are not are
    removed first. `name`: the dataset as the messages call it."""
    missing = f"{name} is not under {folder}"
    if found is not None:
        broken = {p: incomplete_reason(p) for p in found.values() if p.parent == folder}
        broken = {path: reason for path, reason in broken.items() if reason}
        if not broken:
            return
        for path, reason in broken.items():
            log.warning(f"{reason}: removing it and downloading it again")
            path.unlink()
        missing = f"{next(iter(broken.values()))}, so it was removed"
    with removed_if_refused(folder):
        _download(dataset, folder, missing)


def _download(dataset: str, folder: Path, missing: str) -> None:
    """torchvision's download of the raw files into `folder`, or one line saying why not."""
    import torchvision.datasets

    if error := writable_dir_error("paths.data_dir", folder):
        raise DataError(f"{missing} and cannot be downloaded: {error}")
    try:
        for train in (True, False):
            getattr(torchvision.datasets, dataset)(
                str(folder.parent.parent), train=train, download=True
            )
    except Exception as err:
        # torchvision says "Tried URL, got: REASON" per mirror: the last reason, whole words
        last = " ".join(str(err).split()).rsplit("got: ", 1)[-1]
        reason = textwrap.shorten(last, 160, placeholder=" ...") or type(err).__name__
        raise DataError(
            f"{missing} and downloading it failed ({reason}). "
            f"Offline, copy {', '.join(SPLITS.values())} (raw or .gz) into {folder}, "
            f"or set paths.data_dir to a folder that has {dataset}/raw/"
        ) from None


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
