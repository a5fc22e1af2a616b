"""Runs given bad configs, data files or checkpoints, and runs that diverge: one clear line each
(killed, signalled and resumed runs: test_faults.py)."""

import os
import pickle
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from conftest import (
    N_TRAIN,
    assert_one_line,
    mnist_source,
    run_train,
    small_run_overrides,
    write_dataset,
    write_idx,
)

from aelab.callbacks import DivergenceGuard
from aelab.data import ImageDataModule
from aelab.errors import ConfigError, TrainingDiverged
from aelab.models import Autoencoder
from aelab.validation import check_checkpoint

MLP16 = {"_target_": "aelab.nets.MLP", "hidden_dims": [16]}


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    (line,) = [line for line in lines if line.startswith("error")]
    assert line == lines[-1], "the error is the last thing printed"
    for fragment in fragments:
        assert fragment in line
    return line


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.latent_dim=0", ["model.latent_dim=0", "an integer > 0"]),
        ("model.net.hidden_dims=[400,-3]", ["model.net.hidden_dims=[400, -3]", "> 0"]),
        ("model.optimizer.lr=0", ["model.optimizer.lr=0", "a number > 0"]),
        ("data.batch_size=-5", ["data.batch_size=-5", "an integer > 0"]),
        ("data.chunk_size=0", ["data.chunk_size=0", "an integer > 0"]),
        ("data.val_size=0", ["data.val_size=0"]),
        ("trainer.max_epochs=0", ["trainer.max_epochs=0"]),
        ("trainer.profiler=fast", ["trainer.profiler='fast'", "simple, advanced"]),
        ("model.optimizer._target_=torch.optim.Adamm", ["'torch.optim.Adamm' cannot be imported"]),
        (
            "model.optimizer._target_=torch.optim.RMSprop",
            ["model.optimizer.fused is not an argument of torch.optim.RMSprop", "alpha"],
        ),
        (
            "model.net.activation=swish",
            ["model.net.activation='swish' is not an activation", "relu"],
        ),
        ("data.val_size=100000", ["data.val_size=100000 must be in [1, 1023]"]),
    ],
)
def test_bad_config_is_one_line(refusal, data_dir, tmp_path, override, fragments):
    assert_one_line(
        refusal(*small_run_overrides(data_dir), override, output_dir=tmp_path), *fragments
    )


def test_bad_config_is_one_line_from_the_command_line(data_dir, tmp_path):
    """The run's own check through `python train.py`: exit code 1, the error printed last."""
    result = run_train(
        *small_run_overrides(data_dir), "data.val_size=0", f"hydra.run.dir={tmp_path}"
    )
    assert_one_line_error(result, "data.val_size=0")


def test_full_traceback_on_request(data_dir, tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = run_train("model.latent_dim=0", f"hydra.run.dir={tmp_path}", env=env)
    assert (
        result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr
    )


def _corrupt(raw, case: str) -> str:
    images = raw / "train-images-idx3-ubyte"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return "its header promises 802832, so it was removed and downloading it failed"
    if case == "magic":
        images.write_bytes(b"\x00\x00\x0c\x03" + images.read_bytes()[4:])
        return "not an unsigned-byte IDX file (magic number 0x00000c03, expected 0x00000801 for labels or 0x00000803 for images), so it was removed"
    if case == "count":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 2, np.uint8))
        return f"holds {N_TRAIN} images but"
    if case == "swapped":
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            train, test = raw / f"train-{kind}", raw / f"t10k-{kind}"
            data = train.read_bytes()
            train.write_bytes(test.read_bytes())
            test.write_bytes(data)
        return "are train and test swapped?"
    if case == "size":
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((128, 20, 20), np.uint8))
        return "images of size (20, 20), but the training images are (28, 28)"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["truncated", "magic", "count", "swapped", "size"])
def test_bad_data_file_is_one_line(refusal, tmp_path, case):
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_dataset(raw)
    expected = _corrupt(raw, case)
    stderr = refusal(*small_run_overrides(tmp_path / "data"), output_dir=tmp_path / "run")
    assert_one_line(stderr, expected, str(raw))


def test_half_written_download_is_fetched_again(tmp_path, monkeypatch):
    import torchvision.datasets

    raw = tmp_path / "MNIST" / "raw"
    write_dataset(raw)
    _corrupt(raw, "truncated")
    downloads = []

    def fake_download(root, train, download):
        downloads.append(train)
        write_dataset(raw)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_download)
    dm = ImageDataModule(mnist_source(tmp_path), val_size=128)
    dm.prepare_data()
    assert downloads == [True, False]
    dm.setup()
    assert len(dm.train_set) == N_TRAIN - 128


def test_unwritable_output_folder(tmp_path):
    """Checked by the command line's Hydra callback, before the run starts."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_train("debug=fast", f"hydra.run.dir={blocker}/run")
    assert_one_line_error(result, f"hydra.run.dir='{blocker}/run' is not a writable folder")


def test_unwritable_data_folder(refusal, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    stderr = refusal(f"paths.data_dir={blocker}/data", output_dir=tmp_path / "run")
    assert_one_line(stderr, "cannot be downloaded", f"paths.data_dir='{blocker}/data/MNIST/raw'")


def _model(**kwargs) -> Autoencoder:
    return Autoencoder((1, 28, 28), latent_dim=3, net=MLP16, **kwargs)


def test_checkpoint_checks(tmp_path):
    model = _model()
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, good)
    check_checkpoint(good, model)

    # not a zip archive (random bytes, a text file, a file cut short): one line that says so,
    # never torch's advice to load with weights_only=False
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(1000))
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (junk, text, truncated):
        with pytest.raises(ConfigError, match=r"not a checkpoint \(a checkpoint is the zip") as err:
            check_checkpoint(path, model)
        assert "weights_only" not in str(err.value)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    tampered = tmp_path / "tampered.ckpt"
    tampered.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(ConfigError, match="not a checkpoint"):
        check_checkpoint(tampered, model)
    zipped = tmp_path / "tampered_zip.ckpt"  # the same payload in torch.save's own format
    torch.save({"state_dict": Payload(), "hyper_parameters": {}}, zipped)
    with pytest.raises(ConfigError, match="not a loadable checkpoint of this template, damaged"):
        check_checkpoint(zipped, model)

    other = Autoencoder((1, 28, 28), latent_dim=5, net=MLP16)
    # the config keys that differ, not the tensors they change
    with pytest.raises(
        ConfigError,
        match=r"holds a different model than the config describes \(trained with "
        r"model.latent_dim=3, not 5\)",
    ):
        check_checkpoint(good, other)

    small = Autoencoder((1, 16, 16), latent_dim=3, net=MLP16)
    with pytest.raises(
        ConfigError, match=r"trained on images of shape \(1, 28, 28\), the data has \(1, 16, 16\)"
    ):
        check_checkpoint(good, small)

    with pytest.raises(ConfigError, match="does not exist"):
        check_checkpoint(tmp_path / "missing.ckpt", model)


class DivergesInSecondEpoch(Autoencoder):
    def loss_terms(self, x, target):
        terms = super().loss_terms(x, target)
        if self.current_epoch >= 1 and self.global_step % 7 == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def test_divergence_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    model = DivergesInSecondEpoch(
        (1, 28, 28), latent_dim=3, optimizer=partial(torch.optim.Adam, lr=1e-3)
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_last=True, monitor="val/loss"
    )
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        callbacks=[DivergenceGuard(), checkpoint],
        logger=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
        use_distributed_sampler=False,
    )
    dm = ImageDataModule(mnist_source(data_dir), batch_size=32, val_size=128)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(model, dm)
    message = str(err.value)
    assert "training diverged: train/loss is nan at step" in message and "(epoch 1)" in message
    assert f"the last good checkpoint is {tmp_path / 'last.ckpt'}" in message
    weights = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_diverging_run_exits_non_zero(data_dir, tmp_path):
    result = run_train(
        "model=vae",
        "model.optimizer.lr=1e4",
        "trainer.max_epochs=3",
        *small_run_overrides(data_dir),
        f"hydra.run.dir={tmp_path}",
    )
    assert_one_line_error(result, "training diverged:", "at step")
