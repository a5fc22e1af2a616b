"""End-to-end training runs on synthetic data: what a user sees after `python train.py`."""

import pytest
import torch
from conftest import run_train, small_run_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aelab.models import VAE, Autoencoder
from aelab.train import train

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
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    return accumulator


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
    hparams = tb.PluginTagToContent("hparams")
    assert b"model/latent_dim" in hparams["_hparams_/experiment"]
    assert b"hparams/test_loss" in hparams["_hparams_/experiment"]
    assert tb.Scalars("hparams/test_loss")[0].value == tb.Scalars("test/loss")[0].value

    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_train_returns_metric_and_best_checkpoint_reloads(compose_cfg, data_dir, tmp_path):
    cfg = compose_cfg(
        "model=deep_ae", "trainer.max_epochs=2", *small_run_overrides(data_dir), output_dir=tmp_path
    )
    value = train(cfg)

    last_val_loss = events(tmp_path).Scalars("val/loss")[-1].value
    assert value == pytest.approx(last_val_loss, rel=1e-6)

    best = next(p for p in (tmp_path / "checkpoints").iterdir() if p.name != "last.ckpt")
    checkpoint = torch.load(best, weights_only=True)
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
    assert (tmp_path / "csv" / "metrics.csv").read_text().count("val/loss") == 1


@pytest.mark.slow
def test_missing_data_offline_is_one_clear_line(tmp_path):
    empty = tmp_path / "nodata"
    result = run_train(
        f"paths.data_dir={empty}", "data.system_dirs=[]", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: mnist is not under {empty}/MNIST/raw and downloading it failed")
    assert "train-images-idx3-ubyte" in line and "paths.data_dir" in line


def test_val_size_is_a_clear_error(compose_cfg, data_dir, tmp_path):
    from aelab.errors import ConfigError

    cfg = compose_cfg(*small_run_overrides(data_dir), output_dir=tmp_path)
    cfg.data.val_size = 10**6
    with pytest.raises(ConfigError, match=r"data\.val_size"):
        train(cfg)
