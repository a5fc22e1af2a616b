"""Colour networks and bits per dimension: net=resnet, model.likelihood=logistic."""

import math

import numpy as np
import pytest
import torch
from conftest import short_run, write_images
from PIL import Image

from aelab.errors import ConfigError
from aelab.models import VAE
from aelab.models.likelihoods import bits_per_dim, discretized_logistic_log_prob

FIT = ("logger=none", "trainer.max_epochs=1", "++trainer.limit_train_batches=2")
FIT += ("++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1")


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_the_discretized_logistic_by_hand():
    mean, scale = 0.4, 0.1
    x = torch.tensor([0.0, 100 / 255, 1.0])
    log_p = discretized_logistic_log_prob(x, torch.tensor(mean), torch.tensor(math.log(scale)))
    half = 0.5 / 255
    by_hand = [
        sigmoid((half - mean) / scale),  # 0: everything below the first bin's upper edge
        sigmoid((100 / 255 + half - mean) / scale) - sigmoid((100 / 255 - half - mean) / scale),
        1 - sigmoid((1 - half - mean) / scale),  # 255: everything above the last bin's edge
    ]
    assert log_p.exp().tolist() == pytest.approx(by_hand, rel=1e-5)
    every_value = torch.arange(256) / 255
    total = discretized_logistic_log_prob(every_value, torch.tensor(mean), torch.tensor(-3.0))
    assert total.exp().sum().item() == pytest.approx(1, abs=1e-5), "a distribution over 0..255"


def test_bits_per_dim_are_minus_the_elbo_in_bits_per_pixel_and_channel():
    torch.manual_seed(0)
    model = VAE([3, 2, 2], latent_dim=2, net={"_target_": "aelab.nets.MLP", "hidden_dims": [4]},
                likelihood="logistic", beta=4.0)  # fmt: skip
    x = torch.randint(0, 256, (5, 3, 2, 2)) / 255
    terms = model.loss_terms(x, x)
    assert terms["bpd"].item() == pytest.approx(
        (terms["recon"] + terms["kl"]).item() / (12 * math.log(2)), rel=1e-6
    ), "of -ELBO: beta does not enter"
    assert bits_per_dim(12 * math.log(2) * 8, 12) == pytest.approx(8)
    assert "bpd" not in VAE([1, 2, 2], 2).loss_terms(x[:, :1], x[:, :1]), "Bernoulli: no bpd"


@pytest.mark.parametrize("size", [32, 64])
def test_the_residual_net_trains_on_colour_images(size):
    """A few Adam steps of a VAE with net=resnet on 8-bit colour images lower its loss."""
    torch.manual_seed(0)
    net = {"_target_": "aelab.nets.ResNet", "channels": 4, "max_channels": 8}
    model = VAE([3, size, size], latent_dim=4, net=net, likelihood="logistic")
    assert len(model.net.encoder) == 2 * int(math.log2(size // 4)) + 4, "stages down to 4x4"
    x = torch.randint(0, 256, (2, 3, size, size)) / 255
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model.loss_terms(x, x)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert model.reconstruct(x).shape == x.shape
    assert losses[-1] < losses[0]


def test_grey_8_bit_images_report_bpd(compose_cfg, data_dir, tmp_path):
    model, datamodule, trainer = short_run(
        compose_cfg, data_dir, tmp_path, "model.likelihood=logistic", *FIT
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)
    metrics = trainer.callback_metrics
    expected = (metrics["test/recon"] + metrics["test/kl"]) / (784 * math.log(2))
    assert metrics["test/bpd"].item() == pytest.approx(expected.item(), rel=1e-5)
    # test/bpd_iw (aelab.eval) is the same conversion of test/nll_iw, a tighter bound
    from aelab.data import to_float
    from aelab.evaluation.likelihood import importance_weighted_nll

    images = datamodule.test_set.images[:16]
    torch.manual_seed(0)
    bpd_iw = bits_per_dim(importance_weighted_nll(model, images, samples=64), 784)
    with torch.no_grad():
        x = to_float(images)
        terms = model.loss_terms(x, x)
    assert 0 < bpd_iw < terms["bpd"].item()


def test_augmentation_flips_and_shifts_training_images_only(data_dir):
    from conftest import VAL_SIZE, mnist_source

    from aelab.data import ImageDataModule, to_float
    from aelab.data.batches import BatchIndices

    def module(augment):
        dm = ImageDataModule(mnist_source(data_dir), val_size=VAL_SIZE, batch_size=64,
                             augment=augment)  # fmt: skip
        dm.setup()
        return dm

    dm, plain = module(["flip", "crop"]), module(None)
    (x, _), (p, _) = next(iter(dm.train_dataloader())), next(iter(plain.train_dataloader()))
    index = next(iter(BatchIndices(len(dm.train_set), 64, shuffle=True, seed=dm.seed)))
    assert torch.equal(p, to_float(dm.train_set.images[index])), "off by default"
    shifted = 0
    for image, original in zip(x, p, strict=True):
        candidates = [original, original.flip(-1)]
        # some (dy, dx) in [-4, 4]^2 carries the (maybe mirrored) original onto the image
        match = any(
            torch.equal(image[:, 4:-4, 4:-4], torch.roll(c, (dy, dx), (1, 2))[:, 4:-4, 4:-4])
            for c in candidates
            for dy in range(-4, 5)
            for dx in range(-4, 5)
        )
        assert match
        shifted += not torch.equal(image, original)
    assert shifted > 48, "nearly every image is flipped or moved"
    assert torch.equal(next(iter(dm.val_dataloader()))[0], next(iter(plain.val_dataloader()))[0])
    with pytest.raises(ConfigError, match=r"data.augment=\['rotate'\] is not allowed"):
        module(["rotate"])


def test_pictures_are_in_colour_and_legends_name_the_classes(tmp_path, compose_cfg):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import TensorBoardLogger

    from aelab.callbacks.image_grids import ImageGrids
    from aelab.data import FolderSource, ImageDataModule
    from aelab.evaluation.pictures import log_latent_pictures, scatter_figure

    for name in ("red", "blue"):
        write_images(tmp_path / "images" / name, 80, seed=len(name))
    source = FolderSource(str(tmp_path / "images"), str(tmp_path / "cache"))
    dm = ImageDataModule(source, val_size=4)
    dm.prepare_data()
    dm.setup()
    model = VAE([3, 16, 16], latent_dim=3, net={"_target_": "aelab.nets.MLP", "hidden_dims": [8]})
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="", version="")
    log_latent_pictures([logger], model, dm, step=0, traversal_dims=2)
    logger.experiment.flush()
    metadata = next((tmp_path / "tb").rglob("metadata.tsv")).read_text().split()
    assert set(metadata) == {"blue", "red"}
    sprite = np.asarray(Image.open(next((tmp_path / "tb").rglob("sprite.png"))).convert("RGB"))
    assert (sprite[..., 0] != sprite[..., 1]).any(), "the projector's sprites are in colour"
    labels = dm.test_set.labels
    figure = scatter_figure(torch.randn(len(labels), 2), labels, dm.classes)
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["blue", "red"]

    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[],
                              default_root_dir=str(tmp_path), datamodule=dm, global_step=0,
                              current_epoch=0)  # fmt: skip
    ImageGrids(num_images=4, num_samples=4, save_png=True).on_validation_epoch_end(trainer, model)
    grid = np.asarray(Image.open(tmp_path / "images" / "val_reconstructions_epoch_000.png"))
    assert grid.ndim == 3 and (grid[..., 0] != grid[..., 2]).any(), "colour reconstructions"
    fashion = compose_cfg("data=fashion").data.source.classes
    assert fashion[:2] == ["T-shirt/top", "Trouser"] and len(fashion) == 10
