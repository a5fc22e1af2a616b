"""data=folder: any folder of images, decoded once into a memory-mapped uint8 cache."""

import logging
import math

import numpy as np
import pytest
import torch
from conftest import REPO, run_python, short_run, write_images
from PIL import Image

from aelab.data import ImageDataModule, cache
from aelab.data.folder import FolderSource
from aelab.errors import DataError

FIT = ("logger=none", "trainer.max_epochs=1", "++trainer.limit_train_batches=2")
FIT += ("++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1", "data.val_size=0.2")


def folder_module(path, tmp_path, **kwargs):
    """data=folder's datamodule: `image_size`, `channels`, `skip_bad` go to its source."""
    given = {
        key: kwargs.pop(key) for key in ("image_size", "channels", "skip_bad") if key in kwargs
    }
    source = FolderSource(str(path), str(tmp_path / "data"), **given)
    return ImageDataModule(source, **{"val_size": 0.2, "batch_size": 8, **kwargs})


def ready(dm):
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """train/ and test/, each with two class folders of 16x16 RGB images (PNG and JPEG)."""
    root = tmp_path_factory.mktemp("colour")
    for split, n in (("train", 20), ("test", 4)):
        write_images(root / split / "cat", n, seed=1)
        write_images(root / split / "dog", n, seed=2, ext="jpg")
    return root


@pytest.mark.parametrize("model", ["vae model.likelihood=logistic", "conv_ae"])
def test_a_colour_folder_with_classes_and_splits_trains(
    model, colour_folder, compose_cfg, data_dir, tmp_path
):
    model, datamodule, trainer = short_run(
        compose_cfg, data_dir, tmp_path, *f"model={model}".split(), "net=conv", "data=folder",
        f"data.source.path={colour_folder}", *FIT,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)
    assert datamodule.image_shape == (3, 16, 16) and datamodule.classes == ["cat", "dog"]
    assert len(datamodule.train_set) + len(datamodule.val_set) == 40
    assert len(datamodule.test_set) == 8
    assert datamodule.test_set.labels.tolist() == [0] * 4 + [1] * 4
    assert math.isfinite(trainer.callback_metrics["test/loss"])
    if model.hparams.get("likelihood") == "logistic":
        assert 0 < trainer.callback_metrics["test/bpd"] < 16, "bits/dim of colour 8-bit images"


def test_the_cache_is_decoded_once_and_rebuilt_when_files_change(colour_folder, tmp_path):
    dm = ready(folder_module(colour_folder, tmp_path))
    cache = colour_folder / ".aelab-cache.u8"
    assert cache.stat().st_size == 48 * 3 * 16 * 16
    # every set is a view of the mapped file: the split copies nothing
    base = dm.train_set.images.untyped_storage().data_ptr()
    assert dm.val_set.images.untyped_storage().data_ptr() == base
    assert dm.test_set.images.untyped_storage().data_ptr() == base
    image = np.array(Image.open(colour_folder / "test" / "cat" / "img000.png"))
    assert torch.equal(dm.test_set.images[0], torch.from_numpy(image).permute(2, 0, 1))
    written = cache.stat().st_mtime_ns
    again = ready(folder_module(colour_folder, tmp_path))
    assert cache.stat().st_mtime_ns == written, "an up-to-date cache is not decoded again"
    assert torch.equal(again.val_set.images, dm.val_set.images), "the split is fixed"
    extra = colour_folder / "train" / "dog" / "extra.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(extra)
    try:
        grown = ready(folder_module(colour_folder, tmp_path))
        assert len(grown.train_set) + len(grown.val_set) == 41
    finally:
        extra.unlink()


def test_a_grey_folder_without_classes_trains_without_labels(compose_cfg, data_dir, tmp_path):
    folder = tmp_path / "grey"
    write_images(folder, 30, size=(12, 12), colour=False)
    model, datamodule, trainer = short_run(
        compose_cfg, data_dir, tmp_path, "model=conv_ae", "data=folder",
        f"data.source.path={folder}", *FIT,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    assert datamodule.image_shape == (1, 12, 12) and datamodule.classes is None
    assert len(datamodule.test_set) == 3, "10% held out for testing"
    assert set(datamodule.train_set.labels.tolist()) == {-1}


def test_a_folder_that_cannot_be_read_one_line_each(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds nothing"):
        folder_module(empty, tmp_path).prepare_data()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images: data=folder reads PNG, JPG"):
        folder_module(empty, tmp_path).prepare_data()

    mixed = tmp_path / "mixed"
    write_images(mixed / "a", 10, size=(16, 16))
    write_images(mixed / "b", 10, size=(20, 24))
    with pytest.raises(DataError, match=r"2 different sizes .* data.source.image_size=16 "):
        folder_module(mixed, tmp_path).prepare_data()
    with pytest.raises(
        DataError, match=r"smaller side is 16 pixels, less than data.source.image_size=18"
    ):
        folder_module(mixed, tmp_path, image_size=18).prepare_data()
    resized = ready(folder_module(mixed, tmp_path, image_size=8, channels=1))
    assert resized.image_shape == (1, 8, 8)


def test_a_corrupted_image_stops_the_run_or_is_skipped(tmp_path, caplog):
    folder = tmp_path / "broken"
    write_images(folder, 12)
    bad = folder / "img005.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated download
    with pytest.raises(DataError, match=f"{bad}: cannot be decoded .* data.source.skip_bad=true"):
        folder_module(folder, tmp_path).prepare_data()
    with caplog.at_level(logging.WARNING):
        dm = ready(folder_module(folder, tmp_path, skip_bad=True))
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 11
    assert "skipped 1 of 12 images" in caplog.text


# One epoch of training (with its validation) and a test of a small autoencoder over the cache,
# in a process that reports its peak resident memory before fitting (torch's libraries take
# about a gigabyte of their own) and after testing.
EPOCH_OF_TRAINING = """
import math, resource, sys
import lightning as L
from aelab.data import FolderSource, ImageDataModule
from aelab.models import Autoencoder
dm = ImageDataModule(FolderSource(sys.argv[1], sys.argv[2]), batch_size=256, chunk_size=256,
                     val_size=0.05)
model = Autoencoder((3, 128, 128), 4, net={"_target_": "aelab.nets.MLP", "hidden_dims": [8]},
                    optimizer={"_target_": "torch.optim.Adam", "_partial_": True})
trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
print("before_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
trainer.fit(model, dm)
validated = float(trainer.callback_metrics["val/loss"])
(tested,) = trainer.test(model, dm, verbose=False)
sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
assert trainer.global_step == math.ceil(sizes[0] / 256), (trainer.global_step, sizes)
assert math.isfinite(tested["test/loss"]) and math.isfinite(validated)
print("images", sum(sizes), "peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_an_epoch_over_a_2_gb_cache_keeps_resident_memory_far_below_it(tmp_path):
    """The memory-mapped path: an epoch of training over a cache larger than the process may
    hold, pages coming in per chunk and given back after it (the split, validation and the test
    copy nothing)."""
    folder = tmp_path / "big"
    write_images(folder, 11, size=(128, 128))
    source = FolderSource(str(folder), str(tmp_path / "cache"))
    n, shape = 43_700, (3, 128, 128)  # 2.15 GB
    writer = cache.Writer(source.stem, shape)
    block = np.random.default_rng(0).integers(0, 256, (512, *shape), dtype=np.uint8)
    for start in range(0, n, len(block)):
        writer.add(block[: n - start])
    writer.finish(source.fingerprint(12345), [-1] * n, n - 4_000, None)
    size = cache.paths(source.stem)[0].stat().st_size
    assert size > 2e9
    result = run_python("-c", EPOCH_OF_TRAINING, str(folder), str(tmp_path), timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    before = int(result.stdout.split("before_kib")[-1].split()[0]) * 1024
    images, _, peak = result.stdout.split("images")[-1].split()
    assert int(images) == n
    grown = int(peak) * 1024 - before
    assert grown < size / 3, f"peak RSS grew by {grown / 1e9:.2f} GB, the cache is {size / 1e9:.2f}"
