import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, VAL_SIZE, write_dataset, write_idx

from aelab.data import ImageDataModule
from aelab.data.batches import BatchIndices
from aelab.errors import ConfigError, DataError


def datamodule(data_dir, dataset="mnist", **kwargs) -> ImageDataModule:
    kwargs = {"val_size": VAL_SIZE, "batch_size": 50, "system_dirs": [], **kwargs}
    return ImageDataModule(dataset, str(data_dir), **kwargs)


def test_split_keeps_test_set_apart(tmp_path):
    # Each training image carries its own index in its first two pixels.
    raw = tmp_path / "MNIST" / "raw"
    write_dataset(raw)
    images = np.zeros((N_TRAIN, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(N_TRAIN) % 256, np.arange(N_TRAIN) // 256
    write_idx(raw / "train-images-idx3-ubyte", images)
    dm = datamodule(tmp_path)
    dm.setup()

    def ids(split):
        pixels = split.images[:, 0, 0, :2].long()
        return set((pixels[:, 0] + 256 * pixels[:, 1]).tolist())

    assert len(dm.train_set) == N_TRAIN - VAL_SIZE and len(dm.val_set) == VAL_SIZE
    assert ids(dm.train_set).isdisjoint(ids(dm.val_set))
    assert ids(dm.train_set) | ids(dm.val_set) == set(range(N_TRAIN))
    assert len(dm.test_set) == N_TEST
    assert dm.image_shape == (1, 28, 28) and dm.num_classes == 10

    again = datamodule(tmp_path)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images), "the split must be fixed"


def test_batches_are_uint8_until_transferred(data_dir):
    dm = datamodule(data_dir)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == -(-(N_TRAIN - VAL_SIZE) // 50)
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (50, 1, 28, 28)
    first = next(iter(dm.train_dataloader().sampler))
    assert torch.equal(images, dm.train_set.images[first])
    assert torch.equal(labels, dm.train_set.labels[first])
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(y, labels)
    assert sum(len(b[0]) for b in batches) == N_TRAIN - VAL_SIZE


def test_shuffle_changes_per_epoch_and_is_reproducible():
    sampler = BatchIndices(100, 10, shuffle=True, seed=3)
    first = torch.cat(list(sampler))
    sampler.set_epoch(1)
    second = torch.cat(list(sampler))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(100))
    assert not torch.equal(first, second)
    again = BatchIndices(100, 10, shuffle=True, seed=3)
    again.set_epoch(1)
    assert torch.equal(torch.cat(list(again)), second)


def test_ranks_get_disjoint_shards(monkeypatch):
    shards = []
    for rank in range(2):
        monkeypatch.setattr(BatchIndices, "_rank_and_world", staticmethod(lambda r=rank: (r, 2)))
        sampler = BatchIndices(101, 8, shuffle=True, seed=0)
        sampler.set_epoch(4)
        shards.append(torch.cat(list(sampler)).tolist())
        assert len(sampler) == len(list(sampler)) == 7
    assert len(shards[0]) == len(shards[1]) == 50
    assert set(shards[0]).isdisjoint(shards[1])


def test_debian_fashion_copy_is_used_when_data_dir_has_none(tmp_path):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    write_dataset(system, gz=True)
    dm = datamodule(tmp_path / "empty", "fashion", system_dirs=[str(system)])
    dm.prepare_data()
    dm.setup()
    assert dm.files()["train_images"].name == "train-images-idx3-ubyte.gz"
    assert len(dm.train_set) == N_TRAIN - VAL_SIZE


def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    dm = datamodule(tmp_path)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert (
        "downloading it failed (Error downloading train-images-idx3-ubyte.gz: <urlopen" in message
    )


def test_val_size_must_leave_training_data(data_dir):
    dm = datamodule(data_dir, val_size=N_TRAIN)
    with pytest.raises(
        ConfigError, match=rf"data.val_size={N_TRAIN} must be in \[1, {N_TRAIN - 1}\]"
    ):
        dm.setup()


def test_image_label_count_mismatch(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_dataset(raw)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, np.uint8))
    with pytest.raises(
        DataError, match=f"holds {N_TRAIN} images but .* holds {N_TRAIN - 1} labels"
    ):
        datamodule(tmp_path).setup()
