"""Mini-batches sliced from in-memory tensors.

The tutorials convert every image through PIL and `ToTensor` and collate 128 tensors per step;
here the images of several batches (`data.chunk_size`, 4096: 32 batches of 128) are gathered
and turned into floats by one operation each, and every batch is a view into them (a few
percent of a VAE step on a CPU: docs/benchmarks.md). Both can happen on the GPU.
"""

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorImages(Dataset):
    """Images (N, C, H, W) and labels (N,) indexed by a whole tensor of indices at once.

    `after_gather` runs after each gather: a memory-mapped cache gives its pages back there
    (`aelab.data.cache`), so the gathered copy is all that stays resident."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        after_gather: Callable[[], None] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.after_gather = after_gather

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # On a CPU, NumPy's take (a copy per row) rather than torch's index_select or images[index]
        # (element by element; docs/benchmarks.md); on a GPU, index_select.
        if self.images.device.type == "cpu":
            images = torch.from_numpy(self.images.numpy().take(index.numpy(), axis=0))
        else:
            images = self.images.index_select(0, index)
        if self.after_gather is not None:
            self.after_gather()
        return images, self.labels.index_select(0, index)


class BatchIndices(Sampler[torch.Tensor]):
    """Yields the indices of `batches_per_chunk` consecutive batches at a time, from a fresh
    permutation per epoch when shuffling.

    The permutation depends only on (seed, epoch) and is drawn on the CPU, so every rank draws
    the same one, whatever its device, and takes its own contiguous shard, and a resumed run sees
    the same order. `epoch` is asked for at the start of each pass (the Trainer's current epoch).

    Under torch.distributed each rank gets a disjoint shard. Training shards are cut to equal
    sizes (the remainder is left out of that epoch, never seen twice), since every rank must take
    the same number of steps; with `exact=True` (the test set) the shards cover every image once,
    their sizes differing by one at most. The batches are the same whatever `batches_per_chunk`.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        batches_per_chunk: int = 1,
        epoch: Callable[[], int] = lambda: 0,
        exact: bool = False,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.batches_per_chunk = batches_per_chunk
        self.epoch = epoch
        self.exact = exact
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def resume(self, epoch: int, batches: int) -> None:
        """Start the next pass over `epoch` after its first `batches` batches (a run resumed
        from a checkpoint written mid-epoch); other epochs, and epochs done, are not cut."""
        self._resume = (epoch, batches) if 0 < batches < self.num_batches() else None

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def shard(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch."""
        rank, world = self._rank_and_world()
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch())
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        if self.exact:
            shard = order.tensor_split(world)[rank]
        else:
            per_rank = self.num_samples // world
            shard = order[rank * per_rank : (rank + 1) * per_rank]
        return shard.to(self.device)

    def num_batches(self) -> int:
        """Batches per epoch on this rank (the last one may be smaller)."""
        rank, world = self._rank_and_world()
        if self.exact:
            size = self.num_samples // world + (rank < self.num_samples % world)
        else:
            size = self.num_samples // world
        return -(-size // self.batch_size)

    def __len__(self) -> int:
        """Chunks per epoch on this rank."""
        return -(-self.num_batches() // self.batches_per_chunk)

    def __iter__(self) -> Iterator[torch.Tensor]:
        shard = self.shard()
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == self.epoch():
                shard = shard[batches * self.batch_size :]
        yield from shard.split(self.batch_size * self.batches_per_chunk)


class Batches:
    """The mini-batches of a DataLoader over `BatchIndices`, whose items are chunks of several
    batches: each chunk is `transform`ed once and cut into views of `batch_size` images.

    Lightning sees an iterable of batches with a length; the epoch it is in reaches the
    permutation through `BatchIndices.epoch`. It is also stateful in Lightning's sense
    (`state_dict`/`load_state_dict`, kept in every checkpoint): `trained` says how many batches
    of the epoch were trained, and a run resumed mid-epoch goes on with the next one.
    """

    def __init__(
        self,
        loader: DataLoader,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        trained: Callable[[], int] = lambda: 0,
    ) -> None:
        self.loader = loader
        self.indices: BatchIndices = loader.sampler  # type: ignore[assignment]  # the loader is built on one
        self.transform = transform
        self.trained = trained

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.indices.epoch(), "batches": self.trained()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.indices.resume(state["epoch"], state["batches"])

    def __len__(self) -> int:
        return self.indices.num_batches()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.indices.batch_size
        for images, labels in self.loader:
            if self.transform is not None:
                images = self.transform(images)
            yield from zip(images.split(size), labels.split(size), strict=True)
