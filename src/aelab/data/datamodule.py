"""The datamodule of every source of images (aelab.data.source): uint8 tensors (N, C, H, W)
with a fixed train/val split, served in chunks of batches (aelab.data.batches)."""

import torch
from torch.utils.data import DataLoader

from aelab.data.arguments import check_arguments, val_count
from aelab.data.augment import Augment, check_augment
from aelab.data.batches import Batches, BatchIndices, TensorImages
from aelab.data.binarize import TEST_FILE, TRAIN_FILE, DynamicBinarization, binarized_once
from aelab.data.factors import FactorImages
from aelab.data.placement import DataPlacement, rank_zero_seed, to_float
from aelab.data.source import ImageSource, ground_truth_of
from aelab.speedups import trained_batches


class ImageDataModule(DataPlacement):
    """The images of `source`: its training file split into train and val, its test set.

    `prepare_data` (DataPlacement) only fetches: the source downloads or decodes; `setup` only
    reads and splits. The test set is never mixed into training or validation. `split_seed`
    chooses the validation images (the same in every run); `seed` (the run's top-level `seed`,
    set by training) the order of the training batches, epoch by epoch. `binarize` (`dynamic`,
    `static`, None: grey levels) makes the images binary, as the likelihood literature does
    (`aelab.data.binarize`). `ground_truth`, after `setup`: the whole dataset with its factors
    when the source has them, else None (aelab.data.source).
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int = 128,
        chunk_size: int = 4096,
        val_size: float = 5000,
        num_workers: int = 0,
        split_seed: int = 12345,
        seed: int = 0,
        pin_memory: bool = False,
        on_device: bool = True,
        binarize: str | None = None,
        augment: list[str] | None = None,
    ) -> None:
        super().__init__()
        check_arguments(source, binarize)
        self.source = source
        self.name = source.name  # mnist, fashion, CIFAR10, folder, ...
        self.binarize = binarize
        self.augment = check_augment(augment)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.seed = seed
        self.pin_memory = pin_memory
        self.on_device = on_device
        self.classes: list[str] | None = None  # the labels' names, after setup (None: no labels)
        self.ground_truth: FactorImages | None = None  # after setup: every image, its factors
        self.train_set = self.val_set = self.test_set = None  # type: ignore[assignment]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width), from the source (after `prepare_data`)."""
        return self.source.image_shape()

    def setup(self, stage: str | None = None) -> None:
        self.seed = rank_zero_seed(self.seed)
        if self.train_set is not None:
            return
        images = self.source.load(self.split_seed)
        train, test = images.train, images.test
        fixed = train  # the training file's images that are never drawn again
        if self.binarize is not None:
            fixed = binarized_once(train, TRAIN_FILE)
            test = binarized_once(test, TEST_FILE)
        # dynamic: the grey training images, binarized afresh in every batch
        train_file = train if self.binarize == "dynamic" else fixed
        n_val = val_count(self.val_size, len(train))
        order = images.order
        # views of the source's tensors when they come validation first, else gathered copies
        val_rows = slice(0, n_val) if order is None else order[:n_val]
        train_rows = slice(n_val, None) if order is None else order[n_val:]
        labels, release = images.train_labels, images.release
        self.train_set = TensorImages(train_file[train_rows], labels[train_rows], release)
        self.val_set = TensorImages(fixed[val_rows], labels[val_rows], release)
        self.test_set = TensorImages(test, images.test_labels, release)
        self.classes = images.classes
        self.ground_truth = ground_truth_of(self.source, self.split_seed)
        self.move_to_data_device()

    def _loader(
        self, data: TensorImages | None, shuffle: bool, exact: bool = False, train: bool = False
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
        transform = to_float if self.on_model_device(device) else None
        if train and self.binarize == "dynamic":  # new binary pixels each time, where the data is
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
        return self._loader(self.train_set, shuffle=not overfitting, train=True)

    def val_dataloader(self) -> Batches:
        # Equal shards under DDP: validation runs through the DDP wrapper, whose collectives
        # need the same number of batches on every rank.
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> Batches:
        # Every test image exactly once, however many ranks: the metrics are sums and counts
        # reduced over ranks, so unequal shards still give the mean over the whole test set.
        return self._loader(self.test_set, shuffle=False, exact=True)
