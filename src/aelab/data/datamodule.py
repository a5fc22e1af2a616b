"""One datamodule for every source of images (MNIST and Fashion-MNIST, any folder of IDX files,
any folder of images, torchvision's datasets): uint8 tensors (N, C, H, W) with a fixed
train/val split."""

import logging
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from aelab.config import writable_dir_error
from aelab.data.augment import Augment, check_augment
from aelab.data.batches import Batches, BatchIndices, TensorImages
from aelab.data.binarize import (
    BINARIZATIONS,
    TEST_FILE,
    TRAIN_FILE,
    DynamicBinarization,
    binarized_once,
)
from aelab.data.cache import CachedArrays
from aelab.data.folder import FolderSource
from aelab.data.idx import incomplete_reason, read_idx, read_idx_shape
from aelab.data.torchvision import TorchvisionSource
from aelab.errors import ConfigError, DataError
from aelab.speedups import trained_batches

log = logging.getLogger(__name__)

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetInfo:
    folder: str | None  # torchvision's folder under data_dir and dataset class; None: data.path
    system_dirs: tuple[str, ...] = ()  # read-only copies installed by the OS
    classes: tuple[str, ...] | None = None  # the labels' names; None: the digits


DATASETS = {
    "mnist": DatasetInfo("MNIST"),
    "fashion": DatasetInfo(
        "FashionMNIST",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        classes=FASHION_CLASSES,
    ),
    "idx": DatasetInfo(None),  # any folder of the four IDX files: data=idx data.path=DIR
    "folder": DatasetInfo(None),  # any folder of images: data=folder data.path=DIR
    "torchvision": DatasetInfo(None),  # data=torchvision data.name=CIFAR10, data=cifar10
}
# Keys only some datasets read: set for another, they are an error.
ONLY_FOR = {
    "image_size": ("folder", "torchvision"),
    "channels": ("folder", "torchvision"),
    "skip_bad": ("folder",),
    "name": ("torchvision",),
}
# Other names a folder of your own may use for the test files.
ALIASES = {"test_images": "test-images-idx3-ubyte", "test_labels": "test-labels-idx1-ubyte"}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] to float in [0, 1]: done per batch, on the batch's device."""
    return images.float().div_(255)


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


class ImageDataModule(L.LightningDataModule):
    """One grey-scale image dataset: 60k training images split into train and val, 10k test.

    `prepare_data` only makes sure the raw IDX files exist (downloading them with torchvision if
    needed); `setup` only reads and splits them. The official test set is never mixed into
    training or validation. `split_seed` chooses the validation images (the same in every run);
    `seed` (the run's top-level `seed`, set by training) the order of the training batches,
    epoch by epoch. `binarize` (`dynamic`, `static`, None: grey levels) makes the images
    binary, as the likelihood literature does (`aelab.data.binarize`).
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        batch_size: int = 128,
        chunk_size: int = 4096,
        val_size: float = 5000,
        num_workers: int = 0,
        split_seed: int = 12345,
        seed: int = 0,
        pin_memory: bool = False,
        on_device: bool = True,
        system_dirs: list[str] | None = None,
        path: str | None = None,
        binarize: str | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        skip_bad: bool = False,
        cache_dir: str = "cache",
        name: str | None = None,
        augment: list[str] | None = None,
    ) -> None:
        super().__init__()
        if binarize not in BINARIZATIONS:
            raise ConfigError(
                f"data.binarize={binarize!r} is not allowed; it must be dynamic, static or null"
            )
        self.binarize = binarize
        self.augment = check_augment(augment)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r} is unknown; allowed: {sorted(DATASETS)}")
        self.info = DATASETS[dataset]
        given: dict[str, Any] = {"image_size": image_size, "channels": channels}
        given["skip_bad"] = skip_bad
        given["name"] = name
        for key, value in given.items():
            if value not in (None, False) and dataset not in ONLY_FOR[key]:
                raise ConfigError(
                    f"data.{key}={value!r} is read by data={'/'.join(ONLY_FOR[key])} only, "
                    f"not data.dataset={dataset}; remove it"
                )
        if dataset == "torchvision" and not name:
            raise ConfigError("data=torchvision needs data.name=NAME, e.g. CIFAR10, SVHN, CelebA")
        if dataset == "torchvision" and path:
            raise ConfigError(
                f"data.path={path!r} is not read by data=torchvision (torchvision's files are "
                "under paths.data_dir); remove it"
            )
        if dataset in ("idx", "folder") and not path:
            what = "a folder of images" if dataset == "folder" else "a folder of the four IDX files"
            raise ConfigError(f"data={dataset} needs data.path=DIR, {what}")
        self.path = Path(path).expanduser() if path else None
        self.source: FolderSource | TorchvisionSource | None = None
        if dataset == "folder":
            assert self.path is not None  # checked above: data=folder needs data.path
            self.source = FolderSource(
                self.path, Path(cache_dir).expanduser(), image_size, channels, skip_bad, split_seed
            )
        elif dataset == "torchvision":
            assert name is not None  # checked above: data=torchvision needs data.name
            self.source = TorchvisionSource(
                name,
                Path(data_dir).expanduser(),
                Path(cache_dir).expanduser(),
                image_size,
                channels,
                split_seed,
            )
        self._cached: CachedArrays | None = None
        self.dataset = dataset
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.seed = seed
        self.pin_memory = pin_memory
        self.on_device = on_device
        dirs = self.info.system_dirs if system_dirs is None else system_dirs
        self.system_dirs = [Path(d) for d in dirs]
        # None until setup(), and read only after it: typed as what the code reads
        self.train_set: TensorImages = None  # type: ignore[assignment]
        self.val_set: TensorImages = None  # type: ignore[assignment]
        self.test_set: TensorImages = None  # type: ignore[assignment]

    @property
    def raw_dir(self) -> Path:
        if self.info.folder is None:
            if self.path is None:
                raise ConfigError(
                    "data=idx needs data.path=DIR, a folder holding the four IDX files"
                )
            return self.path
        return self.data_dir / self.info.folder / "raw"

    def _find(self) -> dict[str, Path] | None:
        """The four files, raw or gzipped, from `raw_dir` or else a system copy; None if absent."""
        for folder in (self.raw_dir, *self.system_dirs):
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
        found = self._find()
        if found is None:
            missing = ", ".join(SPLITS.values())
            where = (
                "data.path"
                if self.info.folder is None
                else f"paths.data_dir (with {self.info.folder}/raw/)"
            )
            raise DataError(
                f"{self.dataset} not found: {self.raw_dir} lacks {missing} (raw or .gz). "
                f"Place the four IDX files there or point {where} to a folder that has them"
            )
        return found

    def prepare_data(self) -> None:
        """Download the raw files with torchvision unless they are already on disk; a file that
        a killed download left half-written is removed and fetched again, never used."""
        if self.source is not None:
            self.source.prepare()
            return
        missing = f"{self.dataset} is not under {self.raw_dir}"
        if self.info.folder is None:
            self.files()  # a folder of your own is never downloaded: just say what is missing
            return
        found = self._find()
        if found is not None:
            broken = {p: incomplete_reason(p) for p in found.values() if p.parent == self.raw_dir}
            broken = {path: reason for path, reason in broken.items() if reason}
            if not broken:
                return
            for path, reason in broken.items():
                log.warning(f"{reason}: removing it and downloading it again")
                path.unlink()
            missing = f"{next(iter(broken.values()))}, so it was removed"
        with removed_if_refused(self.raw_dir):
            self._download(self.info.folder, missing)
        self.files()

    def _download(self, folder: str, missing: str) -> None:
        """torchvision's download of the raw files into `raw_dir` (torchvision's dataset class
        `folder`), or one line saying why not."""
        import torchvision.datasets

        if error := writable_dir_error("paths.data_dir", self.raw_dir):
            raise DataError(f"{missing} and cannot be downloaded: {error}")
        dataset_cls = getattr(torchvision.datasets, folder)
        try:
            for train in (True, False):
                dataset_cls(str(self.data_dir), train=train, download=True)
        except Exception as err:
            # torchvision says "Tried URL, got: REASON" per mirror: the last reason, whole words
            last = " ".join(str(err).split()).rsplit("got: ", 1)[-1]
            reason = textwrap.shorten(last, 160, placeholder=" ...") or type(err).__name__
            raise DataError(
                f"{missing} and downloading it failed ({reason}). "
                f"Offline, copy {', '.join(SPLITS.values())} (raw or .gz) into {self.raw_dir}, "
                f"or set paths.data_dir to a folder that has {folder}/raw/"
            ) from None

    def wait_for_files(self, timeout: float = 3600, poll: float = 1.0) -> None:
        """Wait until another process of this node (local rank 0, in `prepare_data`) has put
        the complete files in place; never download or repair them here."""
        deadline = time.monotonic() + timeout
        while True:
            if self.source is not None:
                if self.source.load() is not None:
                    return
            else:
                found = self._find()
                if found is not None and not any(incomplete_reason(p) for p in found.values()):
                    return
            if time.monotonic() > deadline:
                raise DataError(
                    f"{self.dataset}: waited {timeout:.0f} s for local rank 0 to fetch it into "
                    f"{self.raw_dir}; it did not finish"
                )
            time.sleep(poll)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width), read from the training images' header (or cache)."""
        if self.source is not None:
            return self.source.image_shape()
        shape = read_idx_shape(self.files()["train_images"])
        if len(shape) != 3:
            raise DataError(
                f"{self.files()['train_images']}: expected (N, H, W) images, got {shape}"
            )
        return (1, shape[1], shape[2])

    def setup(self, stage: str | None = None) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # With seed=null each process drew its own seed; the ranks' shards of one
            # permutation must come from rank 0's.
            shared = [self.seed]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.seed = shared[0]
        if self.train_set is not None:
            return
        if self.source is not None:
            self._setup_cached()
            return
        arrays = read_checked(self.files())
        train_images = arrays["train_images"].unsqueeze(1)
        test_images = arrays["test_images"].unsqueeze(1)
        fixed = train_images  # the training file's images that are never drawn again
        if self.binarize is not None:
            fixed = binarized_once(train_images, TRAIN_FILE)
            test_images = binarized_once(test_images, TEST_FILE)
        val_size = self._val_count(len(train_images))
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(train_images), generator=generator)
        val, train = order[: int(val_size)], order[int(val_size) :]
        labels = arrays["train_labels"].long()
        # dynamic: the grey training images, binarized afresh in every batch
        train_file = train_images if self.binarize == "dynamic" else fixed
        self.train_set = TensorImages(train_file[train], labels[train])
        self.val_set = TensorImages(fixed[val], labels[val])
        self.test_set = TensorImages(test_images, arrays["test_labels"].long())
        self._to_data_device()

    def _val_count(self, n_train: int) -> int:
        """`val_size` as a number of images out of `n_train`."""
        val_size = self.val_size
        if isinstance(val_size, float) and 0 < val_size < 1:
            val_size = max(1, round(val_size * n_train))
        if not 0 < val_size < n_train or val_size != int(val_size):
            raise ConfigError(
                f"data.val_size={self.val_size} must be in [1, {n_train - 1}] "
                f"(the training set holds {n_train} images), or a fraction in (0, 1)"
            )
        return int(val_size)

    def _cache(self) -> CachedArrays:
        """The source's memory-mapped cache (made by `prepare_data`)."""
        if self._cached is None:
            assert self.source is not None, "only folder and torchvision data have a cache"
            self._cached = self.source.load()
            if self._cached is None:
                raise DataError(
                    f"{self.source.stem}: no up-to-date cache of the images; prepare_data() "
                    "makes it"
                )
        return self._cached

    def _setup_cached(self) -> None:
        """Split the cache without copying it: its training images come in the order
        `split_seed` gives, so validation is the first `val_size` of them, and every set is a
        view of the mapped file (whose pages are given back after each gather)."""
        cached = self._cache()
        images, labels, n_train = cached.images, cached.labels, cached.n_train
        val = self._val_count(n_train)
        train_images, test_images = images[:n_train], images[n_train:]
        fixed = train_images
        if self.binarize is not None:
            fixed = binarized_once(train_images, TRAIN_FILE)
            test_images = binarized_once(test_images, TEST_FILE)
        train_file = train_images if self.binarize == "dynamic" else fixed
        release = cached.mapping.release
        self.train_set = TensorImages(train_file[val:], labels[val:n_train], release)
        self.val_set = TensorImages(fixed[:val], labels[:val], release)
        self.test_set = TensorImages(test_images, labels[n_train:], release)
        self._to_data_device()

    @property
    def classes(self) -> list[str] | None:
        """The labels' names (None: the images have no labels, every label is -1)."""
        if self.source is not None:
            return self._cache().classes
        return list(self.info.classes or (str(digit) for digit in range(10)))

    def _to_data_device(self) -> None:
        device = self._data_device()
        if device.type != "cpu":
            for data in (self.train_set, self.val_set, self.test_set):
                data.images, data.labels = data.images.to(device), data.labels.to(device)
                data.after_gather = None

    def _data_device(self) -> torch.device:
        """The accelerator when `on_device` is set and training runs on one: the whole dataset
        (47 MB for MNIST) then lives there, and an epoch makes no host-to-device copies."""
        cpu = torch.device("cpu")
        if not self.on_device or self.trainer is None:
            return cpu
        device = self.trainer.strategy.root_device
        if device.type != "cpu" and self.num_workers > 0:
            raise ConfigError(
                f"data.num_workers={self.num_workers} needs data.on_device=false: with the data on "
                f"{device}, batches are sliced there and there is nothing for workers to do"
            )
        return device

    def _on_model_device(self, device: torch.device) -> bool:
        """Whether `device` is where the model runs (or no trainer says otherwise)."""
        return self.trainer is None or device == self.trainer.strategy.root_device

    def _loader(
        self,
        data: TensorImages | None,
        shuffle: bool,
        exact: bool = False,
        train: bool = False,
        fresh: bool = False,
    ) -> Batches:
        if data is None:
            raise RuntimeError("setup() must run before the dataloaders are requested")
        device = data.images.device
        sampler = BatchIndices(
            len(data),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            device=device,
            batches_per_chunk=max(1, self.chunk_size // self.batch_size),
            epoch=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            exact=exact,
        )
        loader = DataLoader(
            data,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and device.type == "cpu",
            persistent_workers=self.num_workers > 0,
            # Its own generator: starting an epoch then draws nothing from the global RNG, so
            # a resumed run's noise stays in step with an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
        # Images become floats where the model runs: here, a chunk at a time, when the data is
        # there already; otherwise (data on the host, model on a GPU) each batch after its copy,
        # which then moves 4x fewer bytes.
        transform = to_float if self._on_model_device(device) else None
        if fresh:  # data.binarize=dynamic: new binary pixels each time, drawn where the data is
            transform = DynamicBinarization(self.seed, sampler.epoch, then=transform)
        if train and self.augment:  # on whole chunks, where the data is
            transform = Augment(self.augment, self.seed, sampler.epoch, then=transform)
        trained = (lambda: trained_batches(self.trainer)) if train else (lambda: 0)
        return Batches(loader, transform=transform, trained=trained)

    def train_dataloader(self) -> Batches:
        # `trainer.overfit_batches` (debug=overfit) wants the same first batches every epoch.
        # Lightning can switch a plain DataLoader to sequential order, not this one: we do it.
        # Lightning's connectors set this Trainer attribute without declaring it
        overfitting = self.trainer is not None and self.trainer.overfit_batches > 0  # type: ignore[attr-defined]
        return self._loader(
            self.train_set,
            shuffle=not overfitting,
            train=True,
            fresh=self.binarize == "dynamic",
        )

    def val_dataloader(self) -> Batches:
        # Equal shards under DDP: validation runs through the DDP wrapper, whose collectives
        # need the same number of batches on every rank.
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> Batches:
        # Every test image exactly once, however many ranks: the metrics are sums and counts
        # reduced over ranks, so unequal shards still give the mean over the whole test set.
        return self._loader(self.test_set, shuffle=False, exact=True)

    def transfer_batch_to_device(
        self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) to `device`, asynchronously to a GPU, as Lightning's default does,
        but without searching the batch for things to move (docs/benchmarks.md). A bare tensor
        is the model's example input (Lightning's model summary sends it through here)."""
        non_blocking = device.type == "cuda"
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=non_blocking)
        images, labels = batch
        return (
            images.to(device, non_blocking=non_blocking),
            labels.to(device, non_blocking=non_blocking),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the model's example input
            return batch
        images, labels = batch
        if images.dtype == torch.uint8:  # copied to the model's device as bytes
            images = to_float(images)
        return images, labels
