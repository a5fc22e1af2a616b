"""Where the datamodule's images are: which process of a node fetches them (the others wait),
which device holds them, and how each batch reaches the model's device."""

import time

import lightning as L
import torch

from aelab.data.batches import TensorImages
from aelab.data.source import ImageSource
from aelab.errors import ConfigError, DataError


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] to float in [0, 1]: done per batch, on the batch's device."""
    return images.float().div_(255)


def rank_zero_seed(seed: int) -> int:
    """Rank 0's `seed` on every rank under DDP: with seed=null each process drew its own, and
    the ranks' shards of one permutation must come from rank 0's."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [seed]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]
    return seed


class DataPlacement(L.LightningDataModule):
    """The processes and devices of aelab.data.ImageDataModule's images, and Lightning's hooks
    that move its batches."""

    source: ImageSource
    name: str
    split_seed: int
    on_device: bool
    num_workers: int
    # None until setup(), and read only after it: typed as what the code reads
    train_set: TensorImages
    val_set: TensorImages
    test_set: TensorImages

    def prepare_data(self) -> None:
        """On one process per node (local rank 0): the source downloads or decodes its files."""
        self.source.prepare(self.split_seed)

    def wait_for_files(self, timeout: float = 3600, poll: float = 1.0) -> None:
        """Wait until another process of this node (local rank 0, in `prepare_data`) has put
        the complete files in place; never fetch or repair them here."""
        deadline = time.monotonic() + timeout
        while not self.source.ready(self.split_seed):
            if time.monotonic() > deadline:
                raise DataError(
                    f"{self.name}: waited {timeout:.0f} s for local rank 0 to fetch it; it did "
                    "not finish"
                )
            time.sleep(poll)

    def move_to_data_device(self) -> None:
        """The three sets to the device that holds the data (after `setup` has read them)."""
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

    def on_model_device(self, device: torch.device) -> bool:
        """Whether `device` is where the model runs (or no trainer says otherwise)."""
        return self.trainer is None or device == self.trainer.strategy.root_device

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
