"""Mini-batches sliced from in-memory tensors.

The tutorials convert every image through PIL and `ToTensor` and collate 128 tensors per step;
here the images of several batches (`data.chunk_size`, 4096: 32 batches of 128) are gathered
and turned into floats by one operation each, and every batch is a view into them. Both can
happen on the GPU.
"""

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorImages(Dataset):
    """Images (N, C, H, W) and labels (N,) indexed by a whole tensor of indices at once."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select, not images[index]: advanced indexing of a uint8 image tensor is 8x slower
        # on a CPU (0.24 vs 0.03 ms for 128 MNIST images here), a few percent of a training step.
        return self.images.index_select(0, index), self.labels.index_select(0, index)


class BatchIndices(Sampler[torch.Tensor]):
    """Yields the indices of `batches_per_chunk` consecutive batches at a time, from a fresh
    permutation per epoch when shuffling.

    The permutation depends only on (seed, epoch), so every rank draws the same one and takes its
    own contiguous shard, and a resumed run sees the same order. Under torch.distributed each rank
    gets a disjoint shard of equal size (the permutation is cut, not padded, so no image is seen
    twice in an epoch). The batches are the same whatever `batches_per_chunk` is.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        batches_per_chunk: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.batches_per_chunk = batches_per_chunk
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def shard(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch."""
        rank, world = self._rank_and_world()
        if self.shuffle:
            generator = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator, device=self.device)
        else:
            order = torch.arange(self.num_samples, device=self.device)
        per_rank = self.num_samples // world
        return order[rank * per_rank : (rank + 1) * per_rank]

    def num_batches(self) -> int:
        """Batches per epoch on this rank (the last one may be smaller)."""
        _, world = self._rank_and_world()
        return -(-(self.num_samples // world) // self.batch_size)

    def __len__(self) -> int:
        """Chunks per epoch on this rank."""
        return -(-self.num_batches() // self.batches_per_chunk)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.shard().split(self.batch_size * self.batches_per_chunk)


class Batches:
    """The mini-batches of a DataLoader over `BatchIndices`, whose items are chunks of several
    batches: each chunk is `transform`ed once and cut into views of `batch_size` images.

    One gather and one conversion per chunk instead of per batch spared the VAE 1 to 3% of its
    step time on this repository's CPU machine. Lightning sees an iterable of batches with a
    length. A shuffling one also has `sampler` (and `batch_sampler = None`), as a DataLoader
    without automatic batching has them: Lightning calls the sampler's `set_epoch` at every
    epoch's start. An unshuffled one has none, because Lightning takes any sampler but a
    SequentialSampler for shuffling (and under `trainer.overfit_batches` warns that it turns
    shuffling off, which it cannot do here).
    """

    def __init__(
        self, loader: DataLoader, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.loader = loader
        self.indices: BatchIndices = loader.sampler
        if self.indices.shuffle:
            self.sampler = self.indices
            self.batch_sampler = None
        self.transform = transform

    def __len__(self) -> int:
        return self.indices.num_batches()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.indices.batch_size
        for images, labels in self.loader:
            if self.transform is not None:
                images = self.transform(images)
            yield from zip(images.split(size), labels.split(size), strict=True)
