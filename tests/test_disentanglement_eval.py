"""The disentanglement metrics in use: aelab.eval's test/mig ..., the training callback's val/mig
and its traversal labelled by factor, aelab.generate's traversals.png, table=disentanglement.
On a tiny ground-truth set (192 12x12 shapes) served by a source of the test's own."""

import csv
import io
import json
import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import read_events
from omegaconf import OmegaConf, open_dict
from PIL import Image

from aelab.data import ImageDataModule
from aelab.data.factors import FactorImages, generate_shapes
from aelab.data.source import SourceImages
from aelab.errors import ConfigError
from aelab.evaluation.ground_truth import METRIC_NAMES, latent_spread, metric_budget
from aelab.evaluation.traversals import labelled_grid, traversal_rows

N_TEST, VAL = 32, 32
TINY_POINTS = {
    "mig_points": 300,
    "dci_train": 100,
    "dci_test": 50,
    "dci_trees": 3,
    "sap_train": 100,
    "sap_test": 50,
    "factor_vae_batch": 8,
    "factor_vae_train": 20,
    "factor_vae_eval": 10,
    "factor_vae_variance": 100,
}
LATENT_DIM = 4


def tiny_shapes() -> FactorImages:
    """3 shapes x 2 scales x 2 orientations x 4 x 4 positions, 12x12 pixels."""
    return generate_shapes(size=12, scales=2, orientations=2, positions=4, supersample=1)


class TinyImages:
    """An image source (aelab.data.source.ImageSource) of the tiny shapes, shuffled once, the
    last N_TEST the test set; unlabelled; no factors."""

    name = "tiny_shapes"

    def prepare(self, split_seed: int) -> None:
        pass

    def ready(self, split_seed: int) -> bool:
        return True

    def image_shape(self) -> tuple[int, int, int]:
        return (1, 12, 12)

    def load(self, split_seed: int) -> SourceImages:
        images = torch.from_numpy(tiny_shapes().images)
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
        unlabelled = torch.full((len(images),), -1, dtype=torch.int64)
        train, test = images[:-N_TEST], images[-N_TEST:]
        return SourceImages(train, unlabelled[:-N_TEST], test, unlabelled[-N_TEST:], None)


class TinyShapes(TinyImages):
    """The same images with their factors: a ground-truth source
    (aelab.data.source.GroundTruthSource), whose datamodule's `ground_truth` they become."""

    def ground_truth(self, split_seed: int) -> FactorImages:
        return tiny_shapes()


def tiny_run_config(compose_cfg, output_dir: Path, source: str, *overrides: str):
    """train.py's config for 2 epochs of a 4-d VAE on the tiny shapes (`source`: TinyShapes
    or TinyImages), with the callback's tiny budget."""
    cfg = compose_cfg(
        "model=vae",
        f"model.latent_dim={LATENT_DIM}",
        "model.net.hidden_dims=[32]",
        "data.batch_size=32",
        f"data.val_size={VAL}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        *(f"callbacks.disentanglement.points.{k}={v}" for k, v in TINY_POINTS.items()),
        *overrides,
        output_dir=output_dir,
    )
    with open_dict(cfg):
        cfg.data.source = OmegaConf.create({"_target_": f"{__name__}.{source}"})
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder of 2 epochs on the tiny shapes, with TensorBoard."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from aelab.config import CONFIG_DIR, prepare_hydra
    from aelab.training import train

    prepare_hydra()
    HydraConfig.instance().cfg = None
    run = tmp_path_factory.mktemp("run")

    def compose_train(*overrides: str, output_dir: Path):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])

    train(tiny_run_config(compose_train, run, "TinyShapes"))
    return run


@pytest.mark.slow
def test_the_callback_logs_the_metrics_and_a_traversal_labelled_by_factor(trained):
    events = read_events(trained / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    for name in METRIC_NAMES:
        assert len(events.Scalars(f"val/{name}")) == 2, name  # every epoch
    assert 0 <= events.Scalars("val/mig")[-1].value <= 1
    assert "val/mig" in scalars and "test/mig" not in scalars
    images = set(events.Tags()["images"])
    assert {"val/factor_traversal", "val/mutual_information"} <= images
    traversal = events.Images("val/factor_traversal")
    assert len(traversal) == 2
    # one row of 10 images per latent dimension (12 pixels and make_grid's 2 of padding each),
    # the labels in a margin to the left of the grid
    assert traversal[-1].height == LATENT_DIM * (12 + 2) + 2
    assert traversal[-1].width > 10 * (12 + 2) + 2


@pytest.mark.slow
def test_eval_writes_the_six_metrics(trained, tmp_path):
    from hydra import compose, initialize_config_dir

    from aelab.config import CONFIG_DIR, prepare_hydra
    from aelab.eval import evaluate

    prepare_hydra()
    best = next((trained / "checkpoints").glob("epoch_*.ckpt"))
    points = ",".join(f"{k}:{v}" for k, v in TINY_POINTS.items())
    overrides = [
        f"ckpt_path={best}",
        "iw_samples=0",
        "logger=none",
        f"disentanglement.points={{{points}}}",
        f"paths.output_dir={tmp_path}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    metrics = evaluate(cfg)
    names = {f"test/{name}" for name in METRIC_NAMES}
    assert names <= set(metrics)
    assert all(0 <= metrics[name] <= 1 for name in names)
    assert metrics["test/neg_elbo"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert names <= set(record["metrics"])
    assert record["settings"]["disentanglement_points"]["mig_points"] == 300
    assert record["settings"]["disentanglement_points"]["bins"] == 20  # the cpu budget's
    rows = dict(csv.reader(io.StringIO((tmp_path / "metrics.csv").read_text())))
    assert names <= set(rows)


@pytest.mark.slow
def test_generate_writes_the_labelled_traversal(trained, tmp_path):
    from hydra import compose, initialize_config_dir

    from aelab.config import CONFIG_DIR, prepare_hydra
    from aelab.generate import generate

    prepare_hydra()
    overrides = [
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        "num_reconstructions=0",
        "num_interpolations=0",
        "traversals.points=300",
        "traversals.max_rows=3",
        f"paths.output_dir={tmp_path}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("generate", overrides=overrides)
    written = {p.name for p in generate(cfg)}
    assert {"samples.png", "traversals.png", "mutual_information.png"} == written
    traversal = Image.open(tmp_path / "traversals.png")
    assert traversal.height == 3 * (12 + 2) + 2 and traversal.width > 10 * (12 + 2) + 2
    # the labels are drawn: the margin left of the grid is not blank
    margin = np.asarray(traversal.convert("L"))[:, : traversal.width - (10 * 14 + 2)]
    assert (margin < 128).any()


def test_rows_ordered_by_kl_and_labelled_by_their_most_informative_factor():
    kl = np.array([0.1, 3.0, 0.0, 1.5])
    information = np.array([[0.1, 0.0, 0.0], [0.05, 0.9, 0.1], [0.0, 0.0, 0.01], [0.3, 0.2, 0.6]])
    rows = traversal_rows(kl, information, ("shape", "x", "y"))
    assert [row.dim for row in rows] == [1, 3, 0, 2]
    assert [row.label for row in rows] == [
        "z1  x 0.90  KL 3.00",
        "z3  y 0.60  KL 1.50",
        "z0  shape 0.10  KL 0.10",
        "z2  y 0.01  KL 0.00",
    ]
    assert [row.dim for row in traversal_rows(kl, None, (), max_rows=2)] == [1, 3]
    assert traversal_rows(kl, None, (), "var")[0].label == "z1  var 3.00"
    # ties keep the lower dimension first
    assert [row.dim for row in traversal_rows(np.zeros(3), None, ())] == [0, 1, 2]


def test_labelled_grid_writes_each_label_beside_its_row():
    images = torch.ones(2 * 5, 1, 12, 12)  # white: only the labels are dark
    grid = labelled_grid(images, ["z0  KL 1.00", ""], steps=5)
    assert grid.shape[0] == 3 and grid.shape[1] == 2 * 14 + 2
    dark = (grid.mean(0) < 0.5).nonzero()
    assert len(dark) and (dark[:, 0] < 2 + 14).all()  # ink in the first row only


def test_latent_spread_is_the_per_dimension_kl_of_a_gaussian_posterior():
    from aelab.models import VAE, Autoencoder

    vae = VAE(image_shape=[1, 4, 4], latent_dim=3, net={"_target_": "aelab.nets.MLP"})
    mu, logvar = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, np.log(4.0), 0.0]])
    vae.posterior = lambda x: (mu.expand(len(x), -1), logvar.expand(len(x), -1))  # type: ignore[method-assign]
    spread, measure = latent_spread(vae, torch.zeros(5, 1, 4, 4))
    assert measure == "KL"
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2
    assert spread == pytest.approx([0.5, 0.5 * (4 - 1 - np.log(4.0)), 2.0])
    ae = Autoencoder(image_shape=[1, 4, 4], latent_dim=2, net={"_target_": "aelab.nets.MLP"})
    ae.encode = lambda x: torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # type: ignore[method-assign]
    spread, measure = latent_spread(ae, torch.zeros(2, 1, 4, 4))
    assert measure == "var" and spread == pytest.approx([2.0, 0.0])


def fit_without_factors(tmp_path: Path, enabled: bool | None) -> None:
    """One short fit on the tiny images without factors, with the callback alone."""
    from aelab.callbacks import DisentanglementMetrics
    from aelab.models import VAE

    model = VAE(
        image_shape=[1, 12, 12],
        latent_dim=2,
        net={"_target_": "aelab.nets.MLP", "hidden_dims": [16]},
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DisentanglementMetrics(enabled=enabled)],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, ImageDataModule(TinyImages(), batch_size=16, val_size=VAL))
    assert "val/mig" not in trainer.callback_metrics


@pytest.mark.parametrize("enabled", [None, True])
def test_the_callback_on_data_without_factors(tmp_path, caplog, enabled):
    with caplog.at_level(logging.INFO, logger="aelab.callbacks.disentanglement"):
        fit_without_factors(tmp_path, enabled)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("aelab.callbacks")]
    if enabled is None:
        assert lines == []  # the default callbacks on MNIST: silent
    else:
        (line,) = lines
        assert "callbacks.disentanglement.enabled=true" in line and "tiny_shapes" in line
        assert "no ground-truth factors" in line


def test_budgets_follow_the_protocol_and_refuse_unknown_counts(compose_cfg):
    from hydra import compose, initialize_config_dir

    from aelab.config import CONFIG_DIR
    from aelab.evaluation.disentanglement import PAPER_BUDGET, MetricBudget

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cpu = compose("eval", overrides=["ckpt_path=x"]).disentanglement
        paper = compose("eval", overrides=["ckpt_path=x", "protocol=paper"]).disentanglement
    assert metric_budget(cpu.budget, cpu.points, "disentanglement") == MetricBudget()
    assert metric_budget(paper.budget, paper.points, "disentanglement") == PAPER_BUDGET
    assert metric_budget("cpu", {"mig_points": 7}, "k").mig_points == 7
    for budget, points, fragment in (
        ("laptop", {}, "disentanglement.budget='laptop': must be one of cpu, paper"),
        ("cpu", {"mig": 5}, "disentanglement.points: mig is not a count of the metrics"),
        ("cpu", {"sap_test": 0}, "disentanglement.points: sap_test=0 must be at least 1"),
        ("cpu", 5, "disentanglement.points=5: must be null or a mapping"),
    ):
        with pytest.raises(ConfigError, match="^" + fragment.replace("(", r"\(")):
            metric_budget(budget, points, "disentanglement")
    callbacks = compose_cfg().callbacks
    assert callbacks.disentanglement.enabled is None  # a default callback, silent off ground truth


def test_the_disentanglement_table_passes_the_results_checks():
    from hydra import compose, initialize_config_module

    from aelab.results import HEADINGS, check_comparison

    with initialize_config_module("aelab.configs", version_base="1.3"):
        cfg = compose("results", overrides=["table=disentanglement"])
        check_comparison(cfg)
        assert cfg.table.datasets == ["shapes"] and cfg.table.baseline == "beta_vae_1"
        assert {f"test/{name}" for name in METRIC_NAMES} <= set(HEADINGS)
        assert {"test/recon_mse", "test/neg_elbo"} <= set(HEADINGS)
        models = {}
        for row, overrides in cfg.table.rows.items():
            model = compose("train", overrides=[*overrides, *cfg.table.common]).model
            models[row] = (
                model._target_.rsplit(".", 1)[-1],
                model.beta if "beta" in model else None,
            )
            assert model.latent_dim == 10, row
    assert models == {
        "beta_vae_1": ("VAE", 1.0),
        "beta_vae_4": ("VAE", 4.0),
        "beta_vae_16": ("VAE", 16.0),
        "beta_tcvae": ("BetaTCVAE", 4.0),
        "factor_vae": ("FactorVAE", None),
        "capacity_vae": ("CapacityVAE", None),
    }


def test_negative_elbo_whatever_the_weights():
    from aelab.eval import negative_elbo

    assert negative_elbo({"test/recon": 80.0, "test/kl": 5.0, "test/loss": 100.0}) == {
        "test/neg_elbo": 85.0
    }
    assert negative_elbo({"test/elbo": -90.0, "test/loss": 88.0}) == {"test/neg_elbo": 90.0}
    assert negative_elbo({"test/loss": 0.02}) == {}
