"""The source of images (`IdxSource`) that MNIST, Fashion-MNIST and any folder of the four IDX
files are read through: the files strictly read by aelab.data.idx_reader, downloaded by
aelab.data.download."""

from collections.abc import Sequence
from pathlib import Path

import torch

from aelab.data.arguments import checked_idx_path
from aelab.data.download import download_idx
from aelab.data.idx_reader import (
    SPLITS,
    find_idx_files,
    incomplete_reason,
    read_checked,
    read_image_size,
)
from aelab.data.source import SourceImages
from aelab.errors import DataError


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
        self.path = checked_idx_path(path, name, download)
        self.name = name
        self.download = download
        self.system_dirs = [Path(d) for d in system_dirs]
        self.classes = list(classes) if classes else [str(digit) for digit in range(10)]

    def find(self) -> dict[str, Path] | None:
        """The four files, raw or gzipped, from `path` or else a system copy; None if absent."""
        found = (find_idx_files(folder) for folder in (self.path, *self.system_dirs))
        return next((files for files in found if files is not None), None)

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
        """Download the files unless they are on disk, whole; a folder of your own is never
        downloaded: only what it lacks is said."""
        if self.download is not None:
            download_idx(self.download, self.path, self.name, self.find())
        self.files()

    def ready(self, split_seed: int) -> bool:
        found = self.find()
        return found is not None and not any(incomplete_reason(p) for p in found.values())

    def image_shape(self) -> tuple[int, int, int]:
        """(1, height, width), read from the training images' header."""
        return (1, *read_image_size(self.files()["train_images"]))

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
