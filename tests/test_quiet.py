"""What the console shows: other libraries' output, turned down in one place (aelab.quiet), and
aelab's progress bar (a line per epoch where it cannot draw)."""

import logging
import os
import sys
from functools import partial
from types import SimpleNamespace

import lightning
import pytest
import torch
from conftest import MLP32, quick_fit
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import OmegaConf

from aelab.callbacks import ProgressBar
from aelab.models import VAE
from aelab.quiet import quiet_third_parties


@pytest.fixture
def levels(monkeypatch):
    """Lightning's and Optuna's levels as their imports leave them, put back afterwards."""
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    names = ("lightning.pytorch", "lightning.fabric", "optuna")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    yield {name: logging.getLogger(name) for name in names}
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    HydraConfig.instance().cfg = None


def test_other_libraries_speak_at_warning(levels):
    quiet_third_parties()
    assert {logger.level for logger in levels.values()} == {logging.WARNING}
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # read when mlflow is imported
    # a run's new MLflow store has no experiment yet: Lightning's WARNING about it is dropped
    mlflow = logging.getLogger("lightning.pytorch.loggers.mlflow")
    made = "Experiment with name train not found. Creating it."
    assert not mlflow.filter(logging.LogRecord(mlflow.name, logging.WARNING, "", 0, made, (), None))
    other = "Failed to log the config"
    assert mlflow.filter(logging.LogRecord(mlflow.name, logging.WARNING, "", 0, other, (), None))


@pytest.mark.parametrize("verbose", [["lightning"], "lightning", True])
def test_hydra_verbose_brings_a_library_back(levels, verbose, monkeypatch):
    HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"verbose": verbose}})
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")  # a user's own setting wins
    quiet_third_parties()
    assert levels["lightning.pytorch"].level == logging.INFO
    assert levels["optuna"].level == (logging.INFO if verbose is True else logging.WARNING)
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"


def _fit_tiny_vae_with_bar(bar: ProgressBar, data_dir, tmp_path, **trainer_kwargs):
    """A 784-32-4 VAE fitted on the synthetic MNIST with `bar` as its progress bar."""
    model = VAE((1, 28, 28), latent_dim=4, net=MLP32, optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = quick_fit(
        model,
        data_dir,
        enable_progress_bar=True,
        callbacks=[bar],
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    return trainer, model


def test_progress_bar_reads_metrics_only_when_it_redraws(data_dir, tmp_path, monkeypatch):
    shown = []
    redraw = RichProgressBar.on_train_batch_end

    def counting(self, trainer, pl_module, outputs, batch, batch_idx):
        shown.append(batch_idx)
        redraw(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", counting)
    bar = ProgressBar(refresh_rate=1)
    trainer, model = _fit_tiny_vae_with_bar(
        bar,
        data_dir,
        tmp_path,
        batch_size=16,
        limit_train_batches=30,
        limit_val_batches=0,
        log_every_n_steps=5,
    )
    # one redraw a second: the first step, the epoch's last, and not every step in between
    assert shown[0] == 0 and shown[-1] == 29
    assert len(shown) < 30 // 2
    # the training metrics are not Lightning progress-bar metrics, and the bar shows them
    assert not any(name.startswith("train/") for name in trainer.progress_bar_metrics)
    metrics = bar.get_metrics(trainer, model)
    assert {"train/loss", "train/recon", "train/kl"} <= metrics.keys()
    assert metrics["train/loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_logs_a_line_per_epoch_where_it_cannot_draw(
    terminal, data_dir, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    bar = ProgressBar(console_kwargs={"force_terminal": terminal})
    with caplog.at_level("INFO", logger="aelab.callbacks.progress"):
        trainer, _ = _fit_tiny_vae_with_bar(
            bar,
            data_dir,
            tmp_path,
            max_epochs=3,
            limit_train_batches=3,
            log_every_n_steps=1,
            check_val_every_n_epoch=2,
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "aelab.callbacks.progress"]
    if terminal:  # the bar shows it all, its epochs counted from 1 as the log lines are
        assert lines == []
        assert bar.progress.tasks[bar.train_progress_bar_id].description.strip() == "Epoch 3/3"
        return
    assert [line.split(" steps in ")[0] for line in lines] == [
        "Epoch 1/3: 3",
        "Epoch 2/3: 3",
        "Epoch 3/3: 3",
    ]
    # epochs 0 and 2 did not validate: no val/ values (not the sanity check's, not epoch 1's)
    assert all("train/loss " in line for line in lines)
    assert "val/" not in lines[0] and "val/" not in lines[2]
    val_loss = float(trainer.callback_metrics["val/loss"])  # epoch 1's, the last validation
    assert f"val/loss {val_loss:.5g}" in lines[1]
    assert f"train/loss {float(trainer.callback_metrics['train/loss']):.5g}" in lines[2]


@pytest.mark.parametrize("terminal", [True, False])
def test_a_run_resumed_after_an_epochs_last_step(terminal, data_dir, tmp_path, monkeypatch, caplog):
    """Resumed from a checkpoint written after an epoch's last step (SIGTERM during that step),
    Lightning starts the next epoch without `on_train_epoch_start`: its log line is timed from its
    first batch (not the seconds since the machine booted), and in a terminal the bar shows it
    labelled as every other epoch."""

    class SaveAtLastStep(lightning.Callback):  # as SIGTERM during that step does
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 == trainer.num_training_batches:
                trainer.save_checkpoint(tmp_path / "last_step.ckpt")

    def vae():
        return VAE((1, 28, 28), latent_dim=4, net=MLP32, optimizer=partial(torch.optim.Adam))

    quick_fit(vae(), data_dir, callbacks=[SaveAtLastStep()], default_root_dir=tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    bar = ProgressBar(console_kwargs={"force_terminal": terminal})
    with caplog.at_level("INFO", logger="aelab.callbacks.progress"):
        trainer = quick_fit(
            vae(),
            data_dir,
            ckpt_path=tmp_path / "last_step.ckpt",
            max_epochs=2,
            log_every_n_steps=1,
            enable_progress_bar=True,
            callbacks=[bar],
            default_root_dir=tmp_path,
        )
    assert trainer.current_epoch == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "aelab.callbacks.progress"]
    if terminal:
        task = bar.progress.tasks[bar.train_progress_bar_id]
        assert (task.description.strip(), task.completed, lines) == ("Epoch 2/2", 4, [])
        return
    assert len(lines) == 1 and lines[0].startswith("Epoch 2/2: 4 steps in "), lines
    took = float(lines[0].removeprefix("Epoch 2/2: 4 steps in ").split(" s;")[0])
    assert 0 <= took < 60, lines  # not the seconds since the machine booted (a fast epoch: 0.0)


def test_an_epoch_ended_but_not_started_after_a_resume_says_so():
    """The epoch of such a checkpoint may also end without starting (Lightning 2.6): no count
    or time to give."""
    trainer = SimpleNamespace(
        current_epoch=0, max_epochs=30, callback_metrics={"train/loss": torch.tensor(1.5)}
    )
    line = ProgressBar().epoch_summary(trainer)
    assert line == "Epoch 1/30: resumed after its last step; train/loss 1.5", line
