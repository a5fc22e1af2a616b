"""Nothing lost mid-run: exact resume after SIGTERM, SIGKILL or Ctrl-C mid-epoch and after a
SLURM requeue, resumes that keep their run's config and folder, checkpoints that a failing write
cannot damage, damaged newest checkpoints skipped, failed writes as one line, and one run per
folder."""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    assert_one_line,
    assert_same_run,
    run_python,
    run_train,
    small_run_overrides,
)
from omegaconf import OmegaConf

from aelab.errors import RunLocked
from aelab.runlock import LOCK_FILE, read_lock, run_lock

SIGNAL_AT = """
import os, signal
import lightning as L


class SignalAt(L.Callback):
    \"\"\"Stands for the operating system or SLURM: send `signal` to this process (or, `to`
    parent, to the sweep that started this job's process) at `step`.\"\"\"

    def __init__(self, step: int, signal: str, to: str = "self") -> None:
        self.step, self.signum = step, getattr(signal_module, signal)
        self.pid = os.getppid() if to == "parent" else os.getpid()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(self.pid, self.signum)


signal_module = signal
"""
STEPS_PER_EPOCH = 56  # (1024 - 128 validation images) / batch 16
STEP = STEPS_PER_EPOCH + 19  # in the middle of the second epoch


def args_for(data_dir: Path) -> list[str]:
    return [
        "model=vae",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        *small_run_overrides(data_dir),
        "data.batch_size=16",
        "callbacks.progress_bar=null",
    ]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_train(*args_for(data_dir), f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def signal_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "signal_at.py").write_text(SIGNAL_AT)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO / 'src'}", **extra}


def signal_args(signame: str, to: str = "self") -> list[str]:
    return [
        "+callbacks.signal_at._target_=signal_at.SignalAt",
        f"+callbacks.signal_at.step={STEP}",
        f"+callbacks.signal_at.signal={signame}",
        f"+callbacks.signal_at.to={to}",
    ]


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_the_uninterrupted_run(data_dir, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    env = signal_env(tmp_path)
    args = [*args_for(data_dir), *signal_args("SIGTERM"), f"hydra.run.dir={run_dir}"]
    stopped = run_train(*args, env=env)
    assert stopped.returncode == 1
    assert f"error: stopped by SIGTERM at step {STEP}" in stopped.stderr
    interrupted = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert interrupted["global_step"] == STEP  # at the end of the batch the signal came in
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert interrupted["global_step"] >= last["global_step"] > 0
    resumed = run_train(*args, "ckpt_path=last", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "interrupted.ckpt" in resumed.stdout + resumed.stderr
    assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_the_uninterrupted_run(data_dir, tmp_path, uninterrupted):
    """Killed outright (no checkpoint of its own): `ckpt_path=last` resumes from the last
    epoch's and ends as the run that was never killed."""
    run_dir = tmp_path / "run"
    env = signal_env(tmp_path)
    args = [*args_for(data_dir), f"hydra.run.dir={run_dir}"]
    killed = run_train(*args, *signal_args("SIGKILL"), env=env)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] < 2
    resumed = run_train(*args, "ckpt_path=last", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_sigint_writes_a_checkpoint(data_dir, tmp_path):
    """Ctrl-C: the run stops after the batch, with a checkpoint, and exits 1."""
    args = [*args_for(data_dir), *signal_args("SIGINT"), f"hydra.run.dir={tmp_path}"]
    assert run_train(*args, env=signal_env(tmp_path)).returncode == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    interrupted = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file()
    state = torch.load(interrupted, weights_only=True)
    assert state["global_step"] >= torch.load(last, weights_only=True)["global_step"] > 0


@pytest.mark.slow
def test_resume_keeps_the_runs_config_and_refuses_another(data_dir, tmp_path, uninterrupted):
    """A resumed run goes on in its folder: the config it was started with (which aelab.eval
    trusts) stays; another model config is refused; init_from starts a new run instead."""
    args = args_for(data_dir)
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)  # a run of 2 epochs, its folder of its own
    saved = {name: (run / name).read_text() for name in (".hydra/config.yaml", "config.yaml")}
    last = run / "checkpoints" / "last.ckpt"

    resumed = run_train(*args, "trainer.max_epochs=3", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert {name: (run / name).read_text() for name in saved} == saved
    (resume_config,) = (run / ".hydra" / "resumed").glob("*/config.yaml")
    assert "max_epochs: 3" in resume_config.read_text()

    refused = run_train(*args, "trainer.max_epochs=4", "model.beta=2.0", f"ckpt_path={last}")
    assert refused.returncode == 1
    assert_one_line(
        refused.stderr, "that run was started with model.beta=1.0, not 2.0", "init_from=PATH"
    )
    assert torch.load(last, weights_only=True)["epoch"] == 2

    new = tmp_path / "finetuned"
    tuned = run_train(
        *args, "trainer.max_epochs=1", "model.beta=2.0", f"init_from={last}", f"hydra.run.dir={new}"
    )
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "Starting from the weights of" in tuned.stdout + tuned.stderr
    assert (new / "checkpoints" / "last.ckpt").is_file() and (new / "config.yaml").is_file()
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


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
def test_sigterm_stops_a_sweep_and_each_rerun_resumes_the_interrupted_job(data_dir, tmp_path):
    """A sweep asked to stop (SIGTERM: a preempted node, a killed results command) stops
    there, and the interrupted job keeps no record: the rerun resumes it from its checkpoint
    instead of reading it back as failed. Here every job is sent SIGTERM at the same step."""
    sweep = tmp_path / "sweep"
    args = ["-m", *args_for(data_dir), "seed=1,2", *signal_args("SIGTERM")]
    args.append(f"hydra.sweep.dir={sweep}")
    env = signal_env(tmp_path)
    first = run_train(*args, env=env)
    assert first.returncode == 1
    assert f"stopped by SIGTERM at step {STEP}" in first.stderr
    # one line, not Hydra's traceback of the job's exception
    assert_one_line(first.stderr, "job 0: stopped by SIGTERM", "rerun the same command")
    assert "job 1 not started: this sweep was asked to stop" in first.stdout + first.stderr
    for job in "01":
        assert not (sweep / job / "result.json").exists()
    assert not (sweep / "1" / "checkpoints").exists()
    assert (sweep / "0" / "checkpoints" / "interrupted.ckpt").is_file()

    second = run_train(*args, env=env)  # job 0 resumes past the signal's step; job 1 stops
    assert second.returncode == 1
    assert (
        "job 0 was interrupted: resuming from its newest checkpoint"
        in second.stdout + second.stderr
    )
    assert json.loads((sweep / "0" / "result.json").read_text())["status"] == "ok"
    assert not (sweep / "1" / "result.json").exists()

    third = run_train(*args, env=env)
    assert third.returncode == 0, third.stderr[-2000:]
    log = third.stdout + third.stderr
    assert "job 0 finished in an earlier run of this sweep (ok)" in log
    assert "job 1 was interrupted: resuming from its newest checkpoint" in log
    assert json.loads((sweep / "1" / "result.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_sigterm_stops_a_sweep_of_job_processes_sent_to_a_job_or_to_the_sweep(data_dir, tmp_path):
    """hydra/launcher=processes, each job in a process of its own: a job stopped by SIGTERM means
    no later job starts, and SIGTERM sent to the sweep reaches the running job (nothing is left
    running on its own); the stopped jobs keep no record and each rerun resumes them."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=processes", "hydra.launcher.n_jobs=1", *args_for(data_dir)]
    args += ["seed=1,2", f"hydra.sweep.dir={sweep}"]
    env = signal_env(tmp_path)
    first = run_train(*args, *signal_args("SIGTERM"), env=env)  # job 0 is sent SIGTERM
    assert first.returncode == 1
    assert_one_line(first.stderr, f"job 0: stopped by SIGTERM at step {STEP}")
    log = first.stdout + first.stderr
    assert f"stopped by SIGTERM at step {STEP}" in log
    assert "job 1 not started: this sweep was asked to stop" in log
    assert not any((sweep / job / "result.json").exists() for job in "01")
    assert (sweep / "0" / "checkpoints" / "interrupted.ckpt").is_file()
    assert not (sweep / "1" / "checkpoints").exists()

    # job 0 resumes past the signal's step and finishes; at job 1's, the sweep is sent SIGTERM
    second = run_train(*args, *signal_args("SIGTERM", to="parent"), env=env)
    assert second.returncode == 1
    assert_one_line(second.stderr, "job 1", "stopped by SIGTERM")
    log = second.stdout + second.stderr
    assert "job 0 was interrupted: resuming from its newest checkpoint" in log
    assert "SIGTERM: the running jobs stop after a checkpoint" in log
    assert json.loads((sweep / "0" / "result.json").read_text())["status"] == "ok"
    assert not (sweep / "1" / "result.json").exists()
    assert (sweep / "1" / "checkpoints" / "interrupted.ckpt").is_file()

    third = run_train(*args, *signal_args("SIGTERM", to="parent"), env=env)  # past the step
    assert third.returncode == 0, third.stderr[-2000:]
    assert "job 1 was interrupted: resuming from its newest checkpoint" in (
        third.stdout + third.stderr
    )
    assert json.loads((sweep / "1" / "result.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_a_slurm_warning_signal_requeues_once_and_the_requeued_job_resumes_exactly(
    data_dir, tmp_path, uninterrupted
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"  # records the requeue, as SLURM's would
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "train",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    logs = tmp_path / "logs"
    args = [*args_for(data_dir), *signal_args("SIGUSR1"), f"paths.log_dir={logs}"]
    first = run_train(*args, env=signal_env(tmp_path, **slurm))
    assert first.returncode == 1
    assert "error: SLURM's warning signal at step" in first.stderr and "requeued job 4242" in (
        first.stderr
    )
    assert calls.read_text() == "requeue 4242\n"
    (run_dir,) = (logs / "train" / "runs").iterdir()
    # SLURM starts the same command again, in the same job, with its restart count
    requeued = run_train(*args, env=signal_env(tmp_path, **slurm, SLURM_RESTART_COUNT="1"))
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert "SLURM requeued job 4242: resuming its run" in requeued.stdout + requeued.stderr
    assert list((logs / "train" / "runs").iterdir()) == [run_dir]
    assert calls.read_text() == "requeue 4242\n"
    assert_same_run(uninterrupted, run_dir)


WRITER = """
import resource, sys
from pathlib import Path
import torch
from omegaconf import OmegaConf
from aelab.checkpoints import AtomicCheckpointIO
from aelab.errors import WriteFailed

path = Path(sys.argv[1])
before = path.read_bytes()
checkpoint = torch.load(path, weights_only=True)
checkpoint["global_step"] += 1000
failed = 0
for limit in map(int, sys.argv[2:]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    except WriteFailed as err:
        failed += 1
        assert str(path) in str(err) and "the previous checkpoint is intact" in str(err), err
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    assert path.read_bytes() == before, f"damaged by a write stopped at byte {limit}"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left"
print(failed)
"""


@pytest.mark.slow
def test_a_write_stopped_at_any_byte_leaves_the_checkpoint_intact(uninterrupted, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    last = folder / "last.ckpt"
    last.write_bytes((uninterrupted / "checkpoints" / "last.ckpt").read_bytes())
    size = last.stat().st_size
    limits = [0, 1, 511, 4096, *(size * k // 16 for k in range(1, 16)), size - 1]
    (tmp_path / "writer.py").write_text(WRITER)
    result = run_python(str(tmp_path / "writer.py"), str(last), *map(str, limits))
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) == len(limits)  # every write failed, one line each


@pytest.mark.slow
def test_ckpt_path_last_skips_a_damaged_newest_checkpoint(data_dir, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for item in ("config.yaml", "checkpoints/last.ckpt"):
        (run_dir / item).write_bytes((uninterrupted / item).read_bytes())
    (best,) = (uninterrupted / "checkpoints").glob("epoch_*.ckpt")
    (run_dir / "checkpoints" / best.name).write_bytes(best.read_bytes())
    os.utime(run_dir / "checkpoints" / best.name, (time.time() - 60,) * 2)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a writer cut off
    resumed = run_train(
        *args_for(data_dir), "trainer.max_epochs=3", "ckpt_path=last", f"hydra.run.dir={run_dir}"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert f"skipping a checkpoint that does not load, kept as {last}.damaged" in output
    assert f"Resuming from {run_dir / 'checkpoints' / best.name}" in output
    assert torch.load(last, weights_only=True)["epoch"] == 2  # written afresh


@pytest.mark.slow
def test_a_checkpoint_write_that_fails_mid_run_is_one_line(data_dir, uninterrupted, tmp_path):
    """A file-size limit (what a full disk does to a write) stops the next epoch's checkpoint
    half-way: the run exits 1 naming the file and the cause; last.ckpt is still epoch 1's."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for item in ("config.yaml", "checkpoints/last.ckpt"):
        (run_dir / item).write_bytes((uninterrupted / item).read_bytes())
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    limit = len(before) // 2

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    resume = ["ckpt_path=last", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(
        [sys.executable, "train.py", *args_for(data_dir), "trainer.max_epochs=3", *resume],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=600,
    )
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "could not write" in line and "File too large" in line, line
    assert "Traceback" not in result.stderr
    assert last.read_bytes() == before
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".partial")]


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    with run_lock(tmp_path, heartbeat_s=0.05) as mine:
        lock = read_lock(tmp_path)
        assert (lock["pid"], lock["host"]) == (os.getpid(), socket.gethostname())
        time.sleep(0.3)
        assert read_lock(tmp_path)["heartbeat"] > mine["heartbeat"]  # refreshed while it lives
        refused = pytest.raises(RunLocked, match=rf"{tmp_path} is being written by another run")
        with refused, run_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists()

    finished = subprocess.Popen(["true"])
    finished.wait()
    gone = finished.pid  # a process that is gone
    stale = {"host": socket.gethostname(), "pid": int(gone), "started": 0, "heartbeat": 0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(stale))
    with run_lock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert f"its process {gone} is gone" in caplog.text

    elsewhere = {"host": "node-7", "pid": 1, "started": 0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(elsewhere | {"heartbeat": time.time()}))
    with pytest.raises(RunLocked, match="process 1 on node-7"), run_lock(tmp_path):
        pass
    (tmp_path / LOCK_FILE).write_text(json.dumps(elsewhere | {"heartbeat": time.time() - 600}))
    with run_lock(tmp_path):
        pass
    assert "its heartbeat stopped 600 s ago" in caplog.text


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    before = {"host": "node-1", "pid": 1, "slurm_job": "77", "slurm_restart": 0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(before | {"started": 0, "heartbeat": time.time()}))
    with pytest.raises(RunLocked), run_lock(tmp_path):  # the same job, not requeued: live
        pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with run_lock(tmp_path):
        assert read_lock(tmp_path)["slurm_restart"] == 1


@pytest.mark.slow
def test_a_second_run_in_a_live_runs_folder_refuses(data_dir, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "started": time.time()}
        (tmp_path / LOCK_FILE).write_text(json.dumps(lock | {"heartbeat": time.time()}))
        result = run_train(
            *small_run_overrides(data_dir), "debug=fast", f"hydra.run.dir={tmp_path}"
        )
        assert result.returncode == 1
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert f"is being written by another run (process {holder.pid}" in line
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
