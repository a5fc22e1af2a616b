"""Runs that are killed, diverge, or are given bad configs, files or checkpoints."""

import os
import pickle
import signal
import subprocess
import sys
import time
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from conftest import (
    N_TRAIN,
    REPO,
    assert_one_line,
    assert_same_run,
    mnist_source,
    run_train,
    small_run_overrides,
    write_dataset,
    write_idx,
)
from omegaconf import OmegaConf

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


def signal_after_first_epoch(args: list[str], run_dir, signum: int) -> int:
    """Start `train.py ARGS`, send `signum` shortly after its first epoch's checkpoint appears,
    and return its exit code."""
    process = subprocess.Popen(
        [sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signum)
    return process.wait(timeout=120)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(data_dir, tmp_path):
    args = [
        "model=vae",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        *small_run_overrides(data_dir),
        "data.batch_size=8",
        "callbacks.progress_bar=null",
    ]
    uninterrupted = run_train(*args, f"hydra.run.dir={tmp_path / 'a'}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    run_dir = tmp_path / "b"
    exit_code = signal_after_first_epoch(args, run_dir, signal.SIGKILL)
    assert exit_code == -signal.SIGKILL, "the run finished before it could be killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] < 2

    resumed = run_train(*args, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr

    assert_same_run(tmp_path / "a", run_dir)


def test_run_folder_follows_the_checkpoint(tmp_path, monkeypatch):
    from aelab import config
    from aelab.config import parse_overrides, run_dir

    monkeypatch.setattr(config, "run_stamp", lambda: "now")
    runs = tmp_path / "runs"
    assert run_dir(None, str(runs)) == f"{runs}/now"
    # a new run is named by its overrides, folders left out, for `tensorboard --logdir logs`
    given = ["model=vae", "data=fashion", "paths.data_dir=/d", "ckpt_path=null", "~logger"]
    given += ["model.net.hidden_dims=[64,32]"]
    named = run_dir(None, str(runs), overrides=given)
    assert named == f"{runs}/now_model-vae+data-fashion+hidden_dims-64_32"
    # its checkpoints' paths parse as overrides: no `=` or `,` (not a sweep, not an error)
    (override,) = parse_overrides([f"ckpt_path={named}/checkpoints/last.ckpt"])
    assert not override.is_sweep_override()
    assert run_dir("last", str(runs)) == f"{runs}/now", "nothing to resume: a fresh run"
    for name, age in [("old", 100), ("new", 10)]:
        checkpoint = runs / name / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
        os.utime(checkpoint, (time.time() - age, time.time() - age))
    assert run_dir("last", str(runs)) == str(runs / "new")
    named = runs / "old" / "checkpoints" / "last.ckpt"
    assert run_dir(str(named), str(runs)) == str(runs / "old")
    # ckpt_path=last: the newest run of the same model= and data=, not the newest of all
    for name, model in [("old", "ae"), ("new", "conv_vae")]:
        record = {"hydra": {"runtime": {"choices": {"model": model, "data": "mnist"}}}}
        (runs / name / ".hydra").mkdir()
        OmegaConf.save(record, runs / name / ".hydra" / "hydra.yaml")
    assert run_dir("last", str(runs), "ae", "mnist") == str(runs / "old")
    assert run_dir("last", str(runs), "conv_vae", "mnist") == str(runs / "new")
    assert run_dir("last", str(runs), "ae", "fashion") == f"{runs}/now", "none of these: fresh"


@pytest.mark.slow
def test_resuming_the_last_run_of_another_model_names_the_runs_there_are(data_dir, tmp_path):
    logs = tmp_path / "logs"
    args = [*small_run_overrides(data_dir), "debug=fast", f"paths.log_dir={logs}"]
    assert run_train("model=ae", *args).returncode == 0
    refused = run_train("model=vae", "ckpt_path=last", *args)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    (ae_run,) = (logs / "train" / "runs").iterdir()
    assert line.startswith("error: ckpt_path=last: no run of model=vae data=mnist to resume")
    assert f"{ae_run} (model=ae data=mnist)" in line
    assert list((logs / "train" / "runs").iterdir()) == [ae_run]  # the refused run left nothing
    resumed = run_train("model=ae", "ckpt_path=last", "trainer.max_epochs=2", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert list((logs / "train" / "runs").iterdir()) == [ae_run]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_write_a_checkpoint(data_dir, tmp_path, signum):
    args = [
        "model=vae",
        "trainer.max_epochs=50",
        *small_run_overrides(data_dir),
        "data.batch_size=8",
    ]
    exit_code = signal_after_first_epoch([*args, "callbacks.progress_bar=null"], tmp_path, signum)
    assert exit_code == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    interrupted = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file()
    state = torch.load(interrupted, weights_only=True)
    assert state["global_step"] >= torch.load(last, weights_only=True)["global_step"] > 0


@pytest.mark.slow
def test_resume_keeps_the_runs_config_and_refuses_another(data_dir, tmp_path):
    """A resumed run goes on in its folder: the config it was started with (which aelab.eval
    trusts) stays; another model config is refused; init_from starts a new run instead."""
    args = ["model=vae", *small_run_overrides(data_dir), "callbacks.progress_bar=null"]
    run = tmp_path / "run"
    first = run_train(*args, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    saved = {name: (run / name).read_text() for name in (".hydra/config.yaml", "config.yaml")}
    last = run / "checkpoints" / "last.ckpt"

    resumed = run_train(*args, "trainer.max_epochs=2", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert {name: (run / name).read_text() for name in saved} == saved
    (resume_config,) = (run / ".hydra" / "resumed").glob("*/config.yaml")
    assert "max_epochs: 2" in resume_config.read_text()

    refused = run_train(*args, "trainer.max_epochs=3", "model.beta=2.0", f"ckpt_path={last}")
    assert_one_line_error(
        refused, "that run was started with model.beta=1.0, not 2.0", "init_from=PATH"
    )
    assert torch.load(last, weights_only=True)["epoch"] == 1

    new = tmp_path / "finetuned"
    tuned = run_train(
        *args, "trainer.max_epochs=1", "model.beta=2.0", f"init_from={last}", f"hydra.run.dir={new}"
    )
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "Starting from the weights of" in tuned.stdout + tuned.stderr
    assert (new / "checkpoints" / "last.ckpt").is_file() and (new / "config.yaml").is_file()
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
