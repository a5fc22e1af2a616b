"""Binarized images, the protocol of the likelihood literature (`data.binarize`).

Each pixel becomes 1 with probability grey/255 (Salakhutdinov & Murray, 2008): a uint8 pixel x
is 255 where a uniform integer r in [0, 255) is below x, else 0, so P(255) = x/255 exactly and
the images stay uint8 tensors that `to_float` turns into 0 and 1.

- `dynamic`: training images are drawn anew each time they are used, from a stream seeded by
  the run's seed, the rank and the epoch (a resumed run draws the epoch's pixels again).
- `static`: the training images are binarized once.
- both: validation and test images (and `static` training images) are binarized once, from a
  fixed seed, drawn on the CPU: the same binary images in every run, on every device, so every
  run's `test/nll_iw` is measured on the same binary test set.
"""

import torch

from aelab.data.streams import EpochStreamTransform, stream_seed

BINARIZATIONS = (None, "dynamic", "static")
FIXED_SEED = 20160201  # the once-binarized images; each file of the dataset has its own stream
TRAIN_FILE, TEST_FILE = 0, 1
CHUNK = 8192  # images per draw: the uniform integers of one chunk are in memory at a time


def draw(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli pixels of the uint8 `images`, on their device: 255 with probability x/255."""
    r = torch.randint(
        0, 255, images.shape, generator=generator, device=images.device, dtype=torch.uint8
    )
    return (r < images).to(torch.uint8).mul_(255)


def binarized_once(images: torch.Tensor, file: int) -> torch.Tensor:
    """The fixed binary copy of a whole file of images (`TRAIN_FILE`, `TEST_FILE`)."""
    generator = torch.Generator().manual_seed(stream_seed(FIXED_SEED, file))
    return torch.cat([draw(chunk, generator) for chunk in images.split(CHUNK)])


class DynamicBinarization(EpochStreamTransform):
    """The transform of the training batches under `data.binarize=dynamic`: fresh Bernoulli
    pixels for every chunk of images, where they are."""

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return draw(images, generator)
