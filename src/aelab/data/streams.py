"""Random streams of the training chunks' transforms (`data.binarize=dynamic`, `data.augment`):
seeded by the run's seed, the rank and the epoch, so that a resumed run draws each epoch as an
uninterrupted one does, and every rank draws its own."""

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist


def stream_seed(*entropy: int) -> int:
    """A 64-bit seed mixed from several integers (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])


class EpochStreamTransform:
    """A transform of the training chunks that draws from the (seed, rank, epoch, *`stream`)
    stream where the images are, then hands its result to `then` (`to_float`, or nothing when
    the bytes still travel to the model's device). Subclasses define `transform`."""

    stream: tuple[int, ...] = ()  # more entropy: one transform's draws apart from another's

    def __init__(
        self,
        seed: int,
        epoch: Callable[[], int],
        then: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.seed = seed
        self.epoch = epoch
        self.then = then
        self.generator: torch.Generator | None = None
        self.drawing_epoch: int | None = None

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        epoch = self.epoch()
        if self.generator is None or self.generator.device != images.device:
            self.generator, self.drawing_epoch = torch.Generator(images.device), None
        if epoch != self.drawing_epoch:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self.generator.manual_seed(stream_seed(self.seed, rank, epoch, *self.stream))
            self.drawing_epoch = epoch
        images = self.transform(images, self.generator)
        return images if self.then is None else self.then(images)
