"""Ground-truth factor sets served by the datamodule (data=shapes, data=dsprites,
data=factor_npz): written once into the mapped cache in split order, batches as for any source,
and `dm.ground_truth` covering every image once with its factors."""

import numpy as np
import pytest
import torch
from conftest import CLOSED_PORT, assert_one_line, mnist_source
from hydra.utils import instantiate
from test_factors import DSPRITES_GRID, own_arrays, write_dsprites

from aelab.data import GroundTruthSource, ImageDataModule
from aelab.data import factor_sources as sources
from aelab.data.factors import DSPRITES_FILE, DSPRITES_URL, SHAPES, generate_shapes
from aelab.errors import ConfigError, DataError

TINY = {"size": 16, "scales": 2, "orientations": 3, "positions": 4}  # 288 images
TINY_OVERRIDES = [f"data.source.{key}={value}" for key, value in TINY.items()]


def datamodule(compose_cfg, tmp_path, data: str, *overrides: str) -> ImageDataModule:
    cfg = compose_cfg(
        f"data={data}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *overrides,
        output_dir=tmp_path / "run",
    )
    return instantiate(cfg.data, seed=0)


def ready(dm: ImageDataModule) -> ImageDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


def sets_in_cache_order(dm: ImageDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of validation, training and test, in the order of the cache."""
    parts = (dm.val_set, dm.train_set, dm.test_set)
    return torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])


@pytest.fixture
def offline(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, CLOSED_PORT)


def test_shapes_split_batch_and_cover_every_image_once_with_its_factors(compose_cfg, tmp_path):
    dm = ready(datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES))
    assert isinstance(dm.source, GroundTruthSource) and dm.image_shape == (1, 16, 16)
    assert (len(dm.val_set), len(dm.train_set), len(dm.test_set)) == (26, 233, 29)
    images, batch_labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32 and images.max() == 1  # uint8 / 255
    assert torch.allclose(images * 255, (images * 255).round(), atol=1e-4)
    assert dm.test_set.images.dtype == torch.uint8 and dm.classes == list(SHAPES)
    truth = dm.ground_truth
    assert truth is not None and len(truth) == 288 and truth.images.dtype == np.uint8
    assert truth.names == ("shape", "scale", "orientation", "x", "y")
    assert truth.sizes == (3, 2, 3, 4, 4) and truth.factors.dtype == np.int64
    every, labels = sets_in_cache_order(dm)
    assert np.array_equal(truth.images, every.numpy())  # each set's images, each once
    assert np.array_equal(labels.numpy(), truth.factors[:, 0])  # labels: the shape
    assert set(batch_labels.tolist()) <= {0, 1, 2}
    generated = generate_shapes(**TINY)
    wanted = truth.sample_factors(50, np.random.default_rng(0))
    assert np.array_equal(truth.factors[truth.index(wanted)], wanted)
    assert np.array_equal(
        truth.images[truth.index(wanted)], generated.images[generated.index(wanted)]
    )
    assert np.array_equal(
        np.unique(np.ravel_multi_index(truth.factors.T, truth.sizes)), np.arange(288)
    )


def test_shapes_are_made_once_the_same_every_time_and_split_by_split_seed(
    compose_cfg, tmp_path, monkeypatch
):
    first = ready(datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES))
    monkeypatch.setattr(sources, "generate_shapes", lambda **grid: pytest.fail("drawn again"))
    again = ready(datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES))
    assert torch.equal(first.test_set.images, again.test_set.images)
    monkeypatch.undo()
    elsewhere = ready(
        datamodule(compose_cfg, tmp_path / "b", "shapes", *TINY_OVERRIDES, "data.split_seed=7")
    )
    a, b = first.ground_truth, elsewhere.ground_truth
    assert not np.array_equal(a.factors, b.factors)  # another split
    keys = np.ravel_multi_index(a.factors.T, a.sizes), np.ravel_multi_index(b.factors.T, b.sizes)
    assert np.array_equal(a.images[np.argsort(keys[0])], b.images[np.argsort(keys[1])])


def test_a_cache_whose_factors_do_not_match_is_made_again(compose_cfg, tmp_path):
    dm = ready(datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES))
    factor_file = dm.source.factor_file
    np.save(factor_file, np.zeros((288, 5), np.int64))
    assert not dm.source.ready(dm.split_seed)
    again = ready(datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES))
    assert np.array_equal(again.ground_truth.factors, dm.ground_truth.factors)


def test_binarize_makes_the_training_sets_binary_and_leaves_the_ground_truth_grey(
    compose_cfg, tmp_path
):
    dm = ready(datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES, "data.binarize=static"))
    assert set(dm.train_set.images.unique().tolist()) == {0, 255}
    assert len(np.unique(dm.ground_truth.images)) > 2
    binary = ready(
        datamodule(compose_cfg, tmp_path, "shapes", *TINY_OVERRIDES, "data.source.supersample=1")
    )
    assert set(np.unique(binary.ground_truth.images).tolist()) == {0, 255}


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("data.source.positions=30", "data.source.positions=30: must be 2 to size-4=28"),
        ("data.source.test_fraction=1.5", "data.source.test_fraction=1.5 must be in (0, 1)"),
        ("data.source.label_factor=colour", "data.source.label_factor='colour' is not a factor"),
    ],
)
def test_a_bad_shapes_key_is_one_line_naming_it(refusal, tmp_path, override, line):
    stderr = refusal("data=shapes", override, "trainer.accelerator=cpu", output_dir=tmp_path)
    assert_one_line(stderr, line)


def test_dsprites_is_decompressed_chunk_by_chunk_into_the_cache(compose_cfg, tmp_path, monkeypatch):
    rows = np.unique(np.random.default_rng(3).integers(0, np.prod(DSPRITES_GRID), 60))
    folder = tmp_path / "data" / "dsprites"
    folder.mkdir(parents=True)
    imgs = write_dsprites(folder / DSPRITES_FILE, rows)
    monkeypatch.setattr(sources, "DSPRITES_CHUNK", 7)  # several chunks, the last one short
    dm = ready(datamodule(compose_cfg, tmp_path, "dsprites", "data.val_size=5"))
    assert dm.image_shape == (1, 64, 64) and dm.classes == list(SHAPES)
    n_test = round(0.1 * len(rows))
    assert (len(dm.val_set), len(dm.train_set), len(dm.test_set)) == (
        5,
        len(rows) - n_test - 5,
        n_test,
    )
    truth = dm.ground_truth
    assert truth.names == ("shape", "scale", "orientation", "x", "y")
    assert truth.sizes == (3, 6, 40, 32, 32) and truth.origin == str(folder / DSPRITES_FILE)
    file_rows = np.searchsorted(rows, np.ravel_multi_index(truth.factors.T, truth.sizes))
    assert np.array_equal(np.sort(file_rows), np.arange(len(rows)))  # every image once
    assert np.array_equal(truth.images[:, 0], imgs[file_rows] * 255)  # with its own factors
    every, labels = sets_in_cache_order(dm)
    assert np.array_equal(every.numpy(), truth.images)
    assert np.array_equal(labels.numpy(), truth.factors[:, 0])


def test_dsprites_absent_offline_is_one_line_saying_where_to_get_it(compose_cfg, tmp_path, offline):
    dm = datamodule(compose_cfg, tmp_path, "dsprites")
    with pytest.raises(DataError) as refusal:
        dm.prepare_data()
    line = str(refusal.value)
    folder = tmp_path / "data" / "dsprites"
    assert line.startswith(f"{DSPRITES_FILE} is not in {folder} and downloading it failed (")
    assert f"Offline, download {DSPRITES_URL} into {folder}/" in line and "\n" not in line
    assert not (tmp_path / "data").exists()  # the refused download leaves no folders
    never = datamodule(compose_cfg, tmp_path, "dsprites", "data.source.download=false")
    with pytest.raises(DataError, match=r"\(data.source.download=false\): download https://"):
        never.prepare_data()


def test_train_py_refuses_dsprites_absent_offline_in_one_line(refusal, tmp_path, offline):
    stderr = refusal(
        "data=dsprites",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.accelerator=cpu",
        output_dir=tmp_path / "run",
    )
    assert_one_line(stderr, f"{DSPRITES_FILE} is not in", "Offline, download https://")


def own_factor_arrays() -> dict[str, np.ndarray]:
    """24 colour images, factors floor hue (6 values) and shape (4), rows in their order."""
    arrays = own_arrays(24 // 2) | {"factor_sizes": np.array([6, 4])}
    arrays["images"] = np.concatenate([arrays["images"], 255 - arrays["images"]])
    arrays["factors"] = np.stack(np.unravel_index(np.arange(24), (6, 4)), axis=1)
    return arrays


def test_an_npz_of_ones_own_is_served_with_its_factors(compose_cfg, tmp_path):
    arrays = own_factor_arrays()
    np.savez_compressed(tmp_path / "floors.npz", **arrays)
    path = f"data.source.path={tmp_path / 'floors.npz'}"
    dm = ready(
        datamodule(compose_cfg, tmp_path, "factor_npz", path, "data.source.label_factor=shape")
    )
    assert dm.name == "floors" and dm.image_shape == (3, 8, 8)
    assert dm.classes == ["shape=0", "shape=1", "shape=2", "shape=3"]
    truth = dm.ground_truth
    assert truth.names == ("floor hue", "shape") and truth.sizes == (6, 4)
    assert np.array_equal(truth.images[truth.index(arrays["factors"])], arrays["images"])
    every, labels = sets_in_cache_order(dm)
    assert np.array_equal(every.numpy(), truth.images)
    assert np.array_equal(labels.numpy(), truth.factors[:, 1])
    unlabelled = ready(datamodule(compose_cfg, tmp_path, "factor_npz", path))
    assert unlabelled.classes is None and set(unlabelled.test_set.labels.tolist()) == {-1}


def test_an_npz_of_ones_own_with_an_unknown_label_factor_is_one_line(compose_cfg, tmp_path):
    np.savez(tmp_path / "own.npz", **own_factor_arrays())
    dm = datamodule(
        compose_cfg, tmp_path, "factor_npz", f"data.source.path={tmp_path / 'own.npz'}",
        "data.source.label_factor=colour",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"label_factor='colour' is not a factor of .*own.npz"):
        dm.prepare_data()


def test_a_source_without_factors_has_no_ground_truth(data_dir):
    dm = ImageDataModule(mnist_source(data_dir), val_size=128)
    dm.setup()
    assert dm.ground_truth is None and not isinstance(dm.source, GroundTruthSource)


def test_train_runs_on_shapes(compose_cfg, tmp_path):
    from aelab.train import absolute_paths, run

    cfg = compose_cfg(
        "data=shapes",
        *TINY_OVERRIDES,
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=32",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=3",
        "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1",
        "logger=none",
        output_dir=tmp_path / "run",
    )
    absolute_paths(cfg)
    run(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
