"""End-to-end training runs on synthetic data: what a user sees after `python train.py`."""

import os
import re

import pytest
import torch
from conftest import read_events, run_train, small_run_overrides
from omegaconf import OmegaConf

from aelab.models import VAE, Autoencoder
from aelab.training import train

SCALARS = {
    "ae": ["train/loss", "val/loss", "test/loss"],
    "deep_ae": ["train/loss", "val/loss", "test/loss"],
    "vae": [
        f"{stage}/{name}" for stage in ("train", "val", "test") for name in ("loss", "recon", "kl")
    ],
}
IMAGES = {"ae": ["val/reconstructions"], "deep_ae": ["val/reconstructions"]}
IMAGES["vae"] = ["val/reconstructions", "val/samples"]
EPOCHS = 4


def events(run_dir):
    return read_events(run_dir / "tensorboard")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ae", "deep_ae", "vae"])
def test_training_run_logs_learns_and_checkpoints(data_dir, tmp_path, model):
    run_dir = tmp_path / "run"
    overrides = [f"model={model}", f"trainer.max_epochs={EPOCHS}", "model.optimizer.lr=3e-3"]
    result = run_train(*overrides, *small_run_overrides(data_dir), f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]

    tb = events(run_dir)
    assert set(SCALARS[model]) <= set(tb.Tags()["scalars"])
    val_loss = [e.value for e in tb.Scalars("val/loss")]
    assert len(val_loss) == EPOCHS
    assert val_loss[-1] < 0.97 * val_loss[0], f"val/loss did not go down: {val_loss}"
    train_loss = [e.value for e in tb.Scalars("train/loss")]
    assert train_loss[-1] < train_loss[0]
    assert set(IMAGES[model]) == {tag for tag in tb.Tags()["images"] if tag.startswith("val/")}
    assert "latent/scatter" in tb.Tags()["images"]
    grid = tb.Images("val/reconstructions")
    assert len(grid) == EPOCHS
    assert (grid[-1].width, grid[-1].height) == (8 * 30 + 2, 2 * 30 + 2)  # 8 originals over 8
    assert len(tb.Scalars("test/loss")) == 1
    # the HParams session and its final metrics in the run itself: one run per training
    start = tb.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"model.latent_dim" in start and b"seed" in start and b"_target_" not in start
    assert "_hparams_/session_end_info" in tb.PluginTagToContent("hparams")
    assert tb.Scalars("final/test/loss")[0].value == tb.Scalars("test/loss")[0].value
    assert not list((run_dir / "tensorboard").glob("*/**/events.out.tfevents.*"))  # no sub-run
    assert not [tag for tag in tb.Tags()["scalars"] if tag.startswith("hparams/")]
    (config,) = tb.Tensors("config/text_summary")
    assert b"commit `" in config.tensor_proto.string_val[0]  # the code's commit, above the config

    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # the resolved config, with absolute folders, for evaluation from anywhere
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.paths.data_dir == str(data_dir) and saved.data.source.path == str(
        data_dir / "MNIST" / "raw"
    )
    assert saved.paths.output_dir == str(run_dir) and saved.model.latent_dim > 0
    assert "model" in result.stderr and "optimizer" in result.stderr  # the printed config tree
    output = result.stderr + result.stdout
    assert "LeafSpec" not in output  # torch's warning inside Lightning
    assert "GPU available" not in output and "Seed set to" not in output  # Lightning at WARNING
    assert "Training on cpu, 1 process, precision 32-true" in output  # ours, in their place
    # Lightning's summary runs the model's example input: FLOPs counted, not a column of 0
    assert "Total FLOPs" in output and not re.search(r"Total FLOPs: 0\s*$", output, re.M)


@pytest.mark.slow
def test_train_returns_the_tested_checkpoints_metric_not_the_last_epochs(
    compose_cfg, data_dir, tmp_path
):
    """A sweep ranks each job by the checkpoint it tests. The learning rate grows 300-fold per
    epoch (scheduler=step), so the first epoch is the best one and the later ones are worse
    (the loss is an MSE of sigmoid outputs: bounded, never NaN)."""
    cfg = compose_cfg(
        "model=deep_ae",
        "trainer.max_epochs=3",
        "scheduler=step",
        "model.scheduler.step_size=1",
        "model.scheduler.gamma=300",
        *small_run_overrides(data_dir),
        output_dir=tmp_path,
    )
    value = train(cfg)

    val_loss = [e.value for e in events(tmp_path).Scalars("val/loss")]
    assert min(val_loss) == val_loss[0] < val_loss[-1], val_loss
    assert value == pytest.approx(val_loss[0], rel=1e-6)

    best = next(p for p in (tmp_path / "checkpoints").iterdir() if p.name != "last.ckpt")
    assert best.name == "epoch_000.ckpt"
    # last.ckpt follows every epoch, also those that were not the best
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["val_metrics"]["val/loss"] == value
    assert checkpoint["hyper_parameters"]["latent_dim"] == 3
    model = Autoencoder.load_from_checkpoint(best, weights_only=True)
    assert model.encode(torch.rand(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.slow
def test_vae_checkpoint_loads_weights_only(compose_cfg, data_dir, tmp_path):
    cfg = compose_cfg(
        "model=vae", "debug=fast", "logger=csv", *small_run_overrides(data_dir), output_dir=tmp_path
    )
    assert train(cfg) > 0
    model = VAE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.sample(3).shape == (3, 1, 28, 28)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header.count("val/loss") == 1 and header.count("final/val/loss") == 1


@pytest.mark.slow
def test_missing_data_offline_is_one_clear_line_and_leaves_nothing_behind(tmp_path):
    empty = tmp_path / "nodata" / "deeper"
    run = tmp_path / "run"
    result = run_train(
        f"paths.data_dir={empty}", "data.source.system_dirs=[]", f"hydra.run.dir={run}"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: mnist is not under {empty}/MNIST/raw and downloading it failed")
    assert "train-images-idx3-ubyte" in line and "paths.data_dir" in line
    # the reason in whole words (it was cut to its last 160 characters, mid-word)
    assert "(<urlopen error" in line or "(Error" in line, line
    # neither the folders the download would have filled nor the refused run's folder
    assert not (tmp_path / "nodata").exists() and not run.exists()


def test_a_refused_resume_removes_only_its_own_record(data_dir, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_text("not a checkpoint\n")
    (run / "train.log").write_text("the run's own log\n")
    result = run_train(
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *small_run_overrides(data_dir)
    )
    assert result.returncode == 1 and "not a checkpoint" in result.stderr.splitlines()[-1]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "train.log"]
    assert (run / "checkpoints" / "last.ckpt").read_text() == "not a checkpoint\n"


def test_val_size_is_a_clear_error(compose_cfg, data_dir, tmp_path):
    from aelab.errors import ConfigError

    cfg = compose_cfg(*small_run_overrides(data_dir), output_dir=tmp_path)
    cfg.data.val_size = 10**6
    with pytest.raises(ConfigError, match=r"data\.val_size"):
        train(cfg)


TINY_NET = """
from torch import nn


class TinyNet(nn.Module):
    \"\"\"One linear layer each way: the smallest network aelab can train.\"\"\"

    def __init__(self, image_shape, latent_dim, width=16):
        super().__init__()
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.features = width
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, width), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent_dim, pixels), nn.Unflatten(1, image_shape))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "conv_ae"])
def test_a_network_of_your_own_from_a_config_folder_outside_the_package(data_dir, tmp_path, model):
    """The README's recipe: one module and one YAML of the user's, no edit of aelab."""
    (tmp_path / "my_nets.py").write_text(TINY_NET)
    configs = tmp_path / "my_configs"
    (configs / "net").mkdir(parents=True)
    (configs / "net" / "tiny.yaml").write_text(
        "# @package model.net\n_target_: my_nets.TinyNet\nwidth: 24\n"
    )
    run_dir = tmp_path / "run"
    result = run_train(
        "--config-dir",
        str(configs),
        f"model={model}",
        "net=tiny",
        "trainer.max_epochs=2",
        *small_run_overrides(data_dir),
        f"hydra.run.dir={run_dir}",
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["net.encoder.1.weight"].shape == (24, 784)
    assert checkpoint["hyper_parameters"]["net"] == {"_target_": "my_nets.TinyNet", "width": 24}
    val_loss = [e.value for e in events(run_dir).Scalars("val/loss")]
    assert val_loss[-1] < val_loss[0]


MY_MODEL = """
import torch
import torch.nn.functional as F
from torch import nn

from aelab.models import AutoencoderModule


class L1Autoencoder(AutoencoderModule):
    \"\"\"z = W net.encoder(x), x_hat = sigmoid(net.decoder(z)); loss = mean absolute error.\"\"\"

    def __init__(self, image_shape, net, latent_dim=8, optimizer=None, scheduler=None):
        super().__init__(image_shape, latent_dim, net, optimizer, scheduler)
        self.save_hyperparameters(logger=False)
        self.to_code = nn.Linear(self.net.features, latent_dim)

    def encode(self, x):
        return self.to_code(self.net.encoder(x))

    def decode(self, z):
        return torch.sigmoid(self.net.decoder(z))

    def loss_terms(self, x, target):
        return {"loss": F.l1_loss(self.reconstruct(x), target)}
"""
MY_MODEL_YAML = """# @package _global_
model:
  _target_: my_models.L1Autoencoder
  _recursive_: false
  latent_dim: 8
  optimizer:
    _target_: torch.optim.Adam
    _partial_: true
    lr: 3.0e-3
"""


@pytest.mark.slow
def test_a_model_of_your_own_from_a_config_folder_outside_the_package(data_dir, tmp_path):
    (tmp_path / "my_models.py").write_text(MY_MODEL)
    (tmp_path / "my_configs" / "model").mkdir(parents=True)
    (tmp_path / "my_configs" / "model" / "l1.yaml").write_text(MY_MODEL_YAML)
    run_dir = tmp_path / "run"
    result = run_train(
        *("--config-dir", str(tmp_path / "my_configs"), "model=l1", "net=conv"),
        "trainer.max_epochs=2",
        *small_run_overrides(data_dir),
        f"hydra.run.dir={run_dir}",
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tb = events(run_dir)
    assert {"train/loss", "val/loss", "test/loss"} <= set(tb.Tags()["scalars"])
    assert "val/reconstructions" in tb.Tags()["images"]
    val_loss = [e.value for e in tb.Scalars("val/loss")]
    assert val_loss[-1] < val_loss[0]
