"""Training-time augmentation (`data.augment=[flip,crop]`), on whole chunks of images where they
are (the GPU when the data lives there), as torchvision's RandomHorizontalFlip and RandomCrop
with padding do image by image: written out because those draw one flip or one offset per call,
and a call per image would undo the point of serving chunks.

- `flip`: each image mirrored left-right with probability 1/2;
- `crop`: each image padded by `CROP_PADDING` zero pixels per side and cut back to its size at
  a random offset (CIFAR's usual 4 pixels).

The draws come from a stream seeded by the run's seed, the rank and the epoch, so a resumed run
augments its epochs as an uninterrupted one does.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from aelab.data.streams import EpochStreamTransform
from aelab.errors import ConfigError

AUGMENTATIONS = ("flip", "crop")
CROP_PADDING = 4
AUGMENT_STREAM = 1  # keeps these draws apart from data.binarize=dynamic's


def check_augment(augment: Sequence[str] | None) -> tuple[str, ...]:
    """`data.augment` as a tuple, or one line naming what is allowed."""
    augment = tuple(augment or ())
    unknown = [a for a in augment if a not in AUGMENTATIONS]
    if unknown or len(set(augment)) != len(augment):
        raise ConfigError(
            f"data.augment={list(augment)} is not allowed; give null or a list of distinct "
            f"entries of {list(AUGMENTATIONS)}"
        )
    return augment


def flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    mirrored = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(mirrored.view(-1, 1, 1, 1), images.flip(-1), images)


def crop(images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING):
    """Pad each image by `padding` zeros per side and cut it back at a random offset."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=images.device)
    rows = (offsets[0].view(n, 1) + torch.arange(height, device=images.device)).view(n, 1, -1, 1)
    cols = (offsets[1].view(n, 1) + torch.arange(width, device=images.device)).view(n, 1, 1, -1)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


class Augment(EpochStreamTransform):
    """The training chunks' transform under `data.augment`: the augmentations, then `then`."""

    stream = (AUGMENT_STREAM,)

    def __init__(
        self,
        augment: Sequence[str],
        seed: int,
        epoch: Callable[[], int],
        then: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(seed, epoch, then)
        self.augment = tuple(augment)

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if "flip" in self.augment:
            images = flip(images, generator)
        if "crop" in self.augment:
            images = crop(images, generator)
        return images
