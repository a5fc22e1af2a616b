"""data=torchvision (data=cifar10, svhn, celeba) on small fakes of each format, offline."""

import math
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import CLOSED_PORT, short_run
from hydra.utils import instantiate
from PIL import Image

from aelab.errors import DataError

SIZES = {"train": 30, "test": 10}


def fake_cifar10(root):
    """CIFAR-10's python version: pickled batches of (N, 3072) uint8 rows and their labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = SIZES["test"] if name == "test_batch" else SIZES["train"] // 5
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        batch["labels"] = rng.integers(0, 10, n).tolist()
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog"]}
    meta["label_names"] += ["horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def fake_svhn(root):
    """SVHN's .mat files: X (32, 32, 3, N), y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    folder = root / "SVHN"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in SIZES.items():
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.arange(n).reshape(-1, 1) % 10 + 1
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})


def fake_celeba(root):
    """CelebA: aligned JPEGs (218x178), the partition file and the four annotation files."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(2)
    n = SIZES["train"] + SIZES["test"] + 2  # two validation images, not used by aelab
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name)
    parts = [0] * SIZES["train"] + [1, 1] + [2] * SIZES["test"]
    lines = [f"{name} {part}" for name, part in zip(names, parts, strict=True)]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    (folder / "identity_CelebA.txt").write_text("".join(f"{m} 1\n" for m in names))
    for file, header, values in [
        ("list_attr_celeba.txt", "5_o_Clock_Shadow Smiling", "-1 1"),
        ("list_bbox_celeba.txt", "image_id x_1 y_1 width height", "1 2 3 4"),
        ("list_landmarks_align_celeba.txt", "lefteye_x lefteye_y", "69 109"),
    ]:
        rows = "".join(f"{m} {values}\n" for m in names)
        (folder / file).write_text(f"{n}\n{header}\n{rows}")


def no_checksums(monkeypatch):
    """The fakes have no real MD5 sums: torchvision's check passes for files that exist."""
    for module in ("cifar", "svhn", "celeba"):
        monkeypatch.setattr(
            f"torchvision.datasets.{module}.check_integrity",
            lambda path, md5=None: os.path.isfile(path),
        )


FAKES = {"cifar10": fake_cifar10, "svhn": fake_svhn, "celeba": fake_celeba}


@pytest.fixture
def offline(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, CLOSED_PORT)


def data_config(compose_cfg, tmp_path, name, *overrides):
    cfg = compose_cfg(
        f"data={name}", f"paths.data_dir={tmp_path / 'data'}", *overrides, output_dir=tmp_path
    )
    return instantiate(cfg.data, seed=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        ("svhn", "download train_32x32.mat and test_32x32.mat"),
        ("celeba", "known to fail. Put the five .txt files in .*/celeba/ and unzip"),
    ],
)
def test_offline_without_the_files_one_line_says_what_to_put_where(
    name, expected, compose_cfg, tmp_path, offline
):
    dm = data_config(compose_cfg, tmp_path, name)
    with pytest.raises(DataError, match=expected) as error:
        dm.prepare_data()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("cifar10", (3, 32, 32), 10),
        ("svhn", (3, 32, 32), 10),
        ("celeba", (3, 64, 64), None),
    ],
)
def test_each_format_becomes_the_same_uint8_tensors(
    name, shape, classes, compose_cfg, tmp_path, monkeypatch, offline
):
    FAKES[name](tmp_path / "data")
    no_checksums(monkeypatch)
    dm = data_config(compose_cfg, tmp_path, name, "data.val_size=5")
    dm.prepare_data()
    dm.setup()
    assert dm.image_shape == shape
    assert len(dm.train_set) == SIZES["train"] - 5 and len(dm.test_set) == SIZES["test"]
    assert dm.test_set.images.dtype == torch.uint8
    if classes is None:
        assert dm.classes is None and set(dm.test_set.labels.tolist()) == {-1}
    else:
        assert len(dm.classes) == classes
    if name == "cifar10":
        assert dm.classes[0] == "airplane"
        batch = pickle.loads((tmp_path / "data/cifar-10-batches-py/test_batch").read_bytes())
        first = torch.from_numpy(batch["data"][0].reshape(3, 32, 32))
        assert (
            torch.equal(dm.test_set.images[0], first)
            and dm.test_set.labels[0] == batch["labels"][0]
        )
    if name == "svhn":
        assert dm.test_set.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_cifar10_trains(compose_cfg, data_dir, tmp_path, monkeypatch, offline):
    fake_cifar10(tmp_path / "tv")
    no_checksums(monkeypatch)
    model, datamodule, trainer = short_run(
        compose_cfg, data_dir, tmp_path, "data=cifar10", f"paths.data_dir={tmp_path / 'tv'}",
        "data.val_size=5", "data.batch_size=8", "net=conv", "logger=none",
        "trainer.max_epochs=1", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    )  # fmt: skip
    datamodule.prepare_data()
    trainer.fit(model, datamodule=datamodule)
    assert math.isfinite(trainer.callback_metrics["val/loss"])
