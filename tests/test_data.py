import warnings
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import N_TEST, N_TRAIN, REPO, VAL_SIZE, mnist_source, write_dataset, write_idx

from aelab.data import ImageDataModule, to_float
from aelab.data.batches import BatchIndices
from aelab.errors import ConfigError, DataError
from aelab.models import Autoencoder


def datamodule(data_dir, dataset="mnist", **kwargs) -> ImageDataModule:
    kwargs = {"val_size": VAL_SIZE, "batch_size": 50, **kwargs}
    return ImageDataModule(mnist_source(data_dir, dataset), **kwargs)


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
    assert dm.image_shape == (1, 28, 28)

    again = datamodule(tmp_path)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images), "the split must be fixed"


def test_the_split_and_the_batch_order_are_those_of_before_the_source_protocol(tmp_path):
    """The images of each training index, as aelab 0.x (fdb867d, the datamodule reading IDX
    files itself) split and ordered them: the first 12 validation images and the first 12
    images of the first training batch, with split_seed 12345 and seed 7."""
    raw = tmp_path / "MNIST" / "raw"
    write_dataset(raw, n_train=600, n_test=100)
    images = np.zeros((600, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(600) % 256, np.arange(600) // 256
    write_idx(raw / "train-images-idx3-ubyte", images)
    dm = datamodule(tmp_path, val_size=100, seed=7)
    dm.setup()
    pixels = dm.val_set.images[:12, 0, 0, :2].long()
    assert (pixels[:, 0] + 256 * pixels[:, 1]).tolist() == [
        90, 195, 443, 576, 596, 147, 256, 216, 45, 326, 331, 434
    ]  # fmt: skip
    x, _ = next(iter(dm.train_dataloader()))
    pixels = (x[:12, 0, 0, :2] * 255).round().long()
    assert (pixels[:, 0] + 256 * pixels[:, 1]).tolist() == [
        323, 402, 240, 17, 337, 440, 122, 516, 230, 550, 156, 523
    ]  # fmt: skip


def test_batches_are_views_of_chunks_and_the_same_as_gathered_one_by_one(data_dir):
    dm = datamodule(data_dir, chunk_size=120)  # 2 batches of 50 per gather
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == -(-(N_TRAIN - VAL_SIZE) // 50)
    assert len(loader.indices) == -(-len(batches) // 2)
    one_by_one = BatchIndices(N_TRAIN - VAL_SIZE, 50, shuffle=True, seed=dm.seed)
    assert len(one_by_one) == len(batches)
    for (x, y), index in zip(batches, one_by_one, strict=True):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert torch.equal(x, to_float(dm.train_set.images[index]))
        assert torch.equal(y, dm.train_set.labels[index])
    assert batches[0][0].data_ptr() + 50 * 28 * 28 * 4 == batches[1][0].data_ptr(), "one chunk"
    x, y = dm.on_after_batch_transfer(batches[0], 0)
    assert x is batches[0][0] and y is batches[0][1], "already floats: nothing to convert"


def test_batches_cross_to_another_device_as_bytes(data_dir):
    dm = datamodule(data_dir)
    dm.setup()
    # Data on the host, model on a GPU (data.on_device=false): 4x fewer bytes to copy.
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
        overfit_batches=0,
        current_epoch=0,
    )
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (50, 1, 28, 28)
    moved = dm.transfer_batch_to_device((images, labels), torch.device("meta"), 0)
    assert [(t.device.type, t.dtype, t.shape) for t in moved] == [
        ("meta", torch.uint8, images.shape),
        ("meta", labels.dtype, labels.shape),
    ]
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(x, to_float(images))
    assert x.min() >= 0 and x.max() <= 1 and torch.equal(y, labels)


class FirstBatches(L.Callback):
    """Keeps the images of every training epoch's first batch."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.images.append(batch[0].clone())


def first_batches_of_each_epoch(dm: ImageDataModule, **trainer_args) -> list[torch.Tensor]:
    """Fit a tiny model with a bare Trainer; the images of every epoch's first batch."""
    first = FirstBatches()
    net = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}
    model = Autoencoder((1, 28, 28), latent_dim=2, net=net, optimizer=torch.optim.SGD)
    trainer = L.Trainer(
        accelerator="cpu",
        callbacks=[first],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.fit(model, dm)
    return first.images


def test_lightning_draws_a_new_permutation_every_epoch(data_dir):
    dm = datamodule(data_dir)
    images_per_epoch = first_batches_of_each_epoch(
        dm, max_epochs=3, limit_train_batches=2, limit_val_batches=0
    )
    for epoch, images in enumerate(images_per_epoch):
        sampler = BatchIndices(
            N_TRAIN - VAL_SIZE, 50, shuffle=True, seed=0, epoch=lambda e=epoch: e
        )
        assert torch.equal(images, to_float(dm.train_set.images[next(iter(sampler))]))
    assert len(images_per_epoch) == 3
    assert not torch.equal(images_per_epoch[0], images_per_epoch[1])


def test_shuffle_changes_per_epoch_and_seed_and_is_reproducible():
    epoch = [0]
    sampler = BatchIndices(100, 10, shuffle=True, seed=3, epoch=lambda: epoch[0])
    first = torch.cat(list(sampler))
    epoch[0] = 1
    second = torch.cat(list(sampler))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(100))
    assert not torch.equal(first, second)
    again = BatchIndices(100, 10, shuffle=True, seed=3, epoch=lambda: 1)
    assert torch.equal(torch.cat(list(again)), second)
    other_seed = BatchIndices(100, 10, shuffle=True, seed=4, epoch=lambda: 1)
    assert not torch.equal(torch.cat(list(other_seed)), second)


def test_the_run_seed_orders_the_training_data_and_the_split_seed_only_the_split(data_dir):
    """seed=1,2,3 sweeps see different batches; every run validates on the same images."""
    runs = {}
    for seed, split_seed in [(1, 7), (2, 7), (1, 8)]:
        dm = datamodule(data_dir, seed=seed, split_seed=split_seed)
        dm.setup()
        runs[seed, split_seed] = (next(iter(dm.train_dataloader()))[1], dm.val_set.labels)
    (a, val_a), (b, val_b), (_, val_c) = runs.values()
    assert not torch.equal(a, b) and torch.equal(val_a, val_b)
    assert not torch.equal(val_a, val_c)


@pytest.mark.parametrize("batches_per_chunk", [1, 3])
def test_ranks_get_disjoint_shards(monkeypatch, batches_per_chunk):
    shards = []
    for rank in range(2):
        monkeypatch.setattr(BatchIndices, "_rank_and_world", staticmethod(lambda r=rank: (r, 2)))
        sampler = BatchIndices(
            101, 8, shuffle=True, seed=0, batches_per_chunk=batches_per_chunk, epoch=lambda: 4
        )
        shards.append(torch.cat(list(sampler)).tolist())
        assert sampler.num_batches() == 7
        assert len(sampler) == len(list(sampler)) == -(-7 // batches_per_chunk)
    assert len(shards[0]) == len(shards[1]) == 50
    assert set(shards[0]).isdisjoint(shards[1])


@pytest.mark.parametrize("world", [1, 2, 3, 6])
def test_test_shards_cover_every_image_exactly_once(monkeypatch, world):
    seen = []
    for rank in range(world):
        monkeypatch.setattr(
            BatchIndices, "_rank_and_world", staticmethod(lambda r=rank: (r, world))
        )
        sampler = BatchIndices(10_000, 128, shuffle=False, exact=True, batches_per_chunk=3)
        shard = torch.cat(list(sampler)).tolist()
        assert sampler.num_batches() == -(-len(shard) // 128)
        seen += shard
    assert sorted(seen) == list(range(10_000))  # none left out, none twice (9,999 on 3 before)


def test_debian_fashion_copy_is_used_when_data_dir_has_none(tmp_path):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    write_dataset(system, gz=True)
    source = mnist_source(tmp_path / "empty", "fashion")
    source.system_dirs = [system]
    dm = ImageDataModule(source, val_size=VAL_SIZE, batch_size=50)
    dm.prepare_data()
    dm.setup()
    assert source.files()["train_images"].name == "train-images-idx3-ubyte.gz"
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


def test_overfit_batches_sees_the_same_first_batches_every_epoch(data_dir):
    dm = datamodule(data_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images_per_epoch = first_batches_of_each_epoch(dm, max_epochs=2, overfit_batches=2)
    assert not [w for w in caught if "shuffling" in str(w.message)]  # none to turn off
    unshuffled = to_float(dm.train_set.images[:50])
    assert len(images_per_epoch) == 2
    assert all(torch.equal(images, unshuffled) for images in images_per_epoch)


def test_the_permutation_is_drawn_on_the_cpu_whatever_the_data_device():
    """Every rank draws the same order from (seed, epoch), whatever device its data is on: the
    indices are drawn on the CPU and only then moved (here to `meta`, a stand-in for a GPU)."""
    on_cpu = BatchIndices(100, 10, shuffle=True, seed=5, epoch=lambda: 2)
    elsewhere = BatchIndices(100, 10, shuffle=True, seed=5, epoch=lambda: 2, device="meta")
    shard = elsewhere.shard()
    assert shard.device.type == "meta" and shard.shape == on_cpu.shard().shape


def is_binary(images: torch.Tensor) -> bool:
    return bool(((images == 0) | (images == 1)).all())


def test_dynamic_binarization_draws_new_pixels_every_epoch(data_dir):
    dm = datamodule(data_dir, binarize="dynamic")
    # overfit_batches: the same images every epoch, so only their binarization may differ
    first, second = first_batches_of_each_epoch(dm, max_epochs=2, overfit_batches=1)
    grey = to_float(dm.train_set.images[:50])
    assert is_binary(first) and is_binary(second) and not torch.equal(first, second)
    assert (first != second).float().mean() > 0.05
    # each pixel is 1 with probability grey / 255
    assert (first + second).mean() / 2 == pytest.approx(grey.mean().item(), abs=0.01)
    again = datamodule(data_dir, binarize="dynamic")
    assert torch.equal(
        first_batches_of_each_epoch(again, max_epochs=1, overfit_batches=1)[0], first
    )


def test_static_binarization_gives_the_same_training_images_every_epoch(data_dir):
    dm = datamodule(data_dir, binarize="static")
    first, second = first_batches_of_each_epoch(dm, max_epochs=2, overfit_batches=1)
    assert is_binary(first) and torch.equal(first, second)
    assert torch.equal(first, to_float(dm.train_set.images[:50]))


def test_every_run_sees_the_same_binary_validation_and_test_images(data_dir):
    runs = [datamodule(data_dir, binarize=b, seed=s) for b, s in [("dynamic", 1), ("dynamic", 2)]]
    runs.append(datamodule(data_dir, binarize="static", seed=3))
    for dm in runs:
        dm.setup()
    a, b, static = runs
    for split in ("val_set", "test_set"):
        images = getattr(a, split).images
        assert is_binary(to_float(images)) and images.float().mean() > 10
        assert torch.equal(getattr(b, split).images, images)
        assert torch.equal(getattr(static, split).images, images)
    # the seed draws the training pixels: runs with different seeds see different ones
    x_a, x_b = (next(iter(dm.train_dataloader()))[0] for dm in (a, b))
    assert is_binary(x_a) and is_binary(x_b) and not torch.equal(x_a, x_b)
    grey = datamodule(data_dir)
    grey.setup()
    assert not is_binary(to_float(grey.test_set.images))


def test_an_unknown_binarization_names_the_key_and_the_choices(data_dir):
    with pytest.raises(
        ConfigError,
        match=r"^data.binarize='yes' is not allowed; it must be dynamic, static or null$",
    ):
        datamodule(data_dir, binarize="yes")


def test_a_source_of_ones_own_as_docs_extending_writes_it(compose_cfg, tmp_path, monkeypatch):
    """docs/extending.md's NoiseSource and its YAML, taken from the page itself: composed from
    another config folder, its keys checked like every _target_'s, split and served."""
    import re

    from hydra.utils import instantiate
    from omegaconf import open_dict

    from aelab.validation import check_config

    page = (REPO / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(# my_sources.py\n.*?)```", page, re.S).group(1)
    yaml = re.search(r"```yaml\n# my_configs/data/noise.yaml\n(.*?)```", page, re.S).group(1)
    (tmp_path / "my_sources.py").write_text(code)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "noise.yaml").write_text(yaml)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path}]", "data=noise", output_dir=tmp_path)
    check_config(cfg)
    dm = instantiate(cfg.data, seed=0)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1800, 200, 200)
    assert dm.image_shape == (1, 16, 16) and dm.classes is None and dm.name == "noise"
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (128, 1, 16, 16) and set(y.tolist()) == {-1}
    with open_dict(cfg):
        cfg.data.source.n_tain = 5
    with pytest.raises(ConfigError, match=r"^data.source.n_tain is not an argument of my_sources"):
        check_config(cfg)
