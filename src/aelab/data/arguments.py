"""The data config's arguments checked, each refusal one line naming its key."""

from pathlib import Path
from typing import Any

from aelab.data.binarize import BINARIZATIONS
from aelab.data.source import ImageSource
from aelab.errors import ConfigError


def check_arguments(source: Any, binarize: str | None) -> None:
    """`data.source` is a source of images and `data.binarize` one of the binarizations."""
    if binarize not in BINARIZATIONS:
        raise ConfigError(
            f"data.binarize={binarize!r} is not allowed; it must be dynamic, static or null"
        )
    if not isinstance(source, ImageSource):
        raise ConfigError(
            f"data.source is a {type(source).__name__}, not a source of images (it needs "
            "name, prepare, ready, image_shape and load: aelab.data.source.ImageSource)"
        )


def val_count(val_size: float, n_train: int) -> int:
    """`data.val_size` as a number of images out of `n_train` (a fraction of them in (0, 1))."""
    count = val_size
    if isinstance(count, float) and 0 < count < 1:
        count = max(1, round(count * n_train))
    if not 0 < count < n_train or count != int(count):
        raise ConfigError(
            f"data.val_size={val_size} must be in [1, {n_train - 1}] "
            f"(the training set holds {n_train} images), or a fraction in (0, 1)"
        )
    return int(count)


def checked_idx_path(path: str, name: str, download: str | None) -> Path:
    """`data.source.path` of IDX files: set, and where torchvision puts its files when
    `download` names the dataset that fetches them."""
    if not path:
        raise ConfigError(
            f"data.source.path is not set: data={name} needs data.source.path=DIR, a folder "
            "holding the four IDX files"
        )
    folder = Path(path).expanduser()
    if download is not None and folder.parts[-2:] != (download, "raw"):
        raise ConfigError(
            f"data.source.path={path!r} must end in {download}/raw, where torchvision's "
            f"{download} puts its files (data.source.download={download})"
        )
    return folder
