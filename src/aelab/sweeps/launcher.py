"""A Hydra launcher that runs each job of a multirun in a process of its own, `n_jobs` at once.

`hydra/launcher=processes` selects it (`hydra/launcher=joblib`, the name
lightning-hydra-template's users know, too, with one line saying which launcher it gets). Why
not hydra-joblib-launcher: joblib's worker pool breaks when the operating system kills one
worker (the OOM killer's SIGKILL), ends the whole sweep with `TerminatedWorkerError` and kills
the jobs running beside it. Here every job is a fresh spawned process watched by a thread: one
that dies is recorded as failed with its signal, and the other jobs run on.

SIGTERM (`kill`, a preempted node, `python -m aelab.results` stopped) is a request to stop, as in
a sweep of one process (`aelab.sweeps.jobs`): sent to the sweep, it is passed on to the running
jobs, which save a checkpoint and stop without a record; a job stopped by it, sent to the sweep or
to the job, means no later job starts. The rerun of the same command resumes them.

Jobs that run side by side share the CPUs: each gets `threads_per_job` threads for PyTorch and
OpenMP (`auto`: the CPUs divided among the jobs that run at once), not every core, which would run
n_jobs x cores threads on the cores and slow every job down (an OMP_NUM_THREADS set by the user
wins).
"""

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from aelab.errors import ConfigError, Interrupted, SweepStopped
from aelab.sweeps.jobs import (
    job_error,
    killed_record,
    not_started,
    recorded_value,
    write_record,
)

log = logging.getLogger(__name__)
# hydra-joblib-launcher's schema, which Hydra merges into `hydra/launcher=joblib` when that
# plugin is installed too: accepted at these values only, none of them applies here
JOBLIB_DEFAULTS = {
    "backend": None,
    "prefer": "processes",
    "require": None,
    "verbose": 0,
    "timeout": None,
    "pre_dispatch": "2*n_jobs",
    "batch_size": "auto",
    "temp_folder": None,
    "max_nbytes": None,
    "mmap_mode": "r",
}


def job_config(
    hydra_context: HydraContext, config: DictConfig, idx: int, overrides: list[str]
) -> DictConfig:
    """The composed config of job `idx`, as Hydra's own launchers make it."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    return sweep_config


def job_threads(setting: int | str | None, n_jobs: int) -> int | None:
    """The threads of each job: `auto` divides the CPUs among `n_jobs` jobs running at once (at
    least 1); None (the libraries' defaults) also where the user has set OMP_NUM_THREADS."""
    number = isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1
    if setting not in (None, "auto") and not number:
        raise ConfigError(
            f"hydra.launcher.threads_per_job={setting!r}: auto, a positive number, or null "
            "(PyTorch's default: every core in every job)"
        )
    if setting is None or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // n_jobs) if setting == "auto" else int(setting)


def limit_threads(threads: int | None) -> None:
    """Give this process `threads` PyTorch and OpenMP threads (None: leave their defaults)."""
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before numpy or scikit-learn start a pool
    import torch

    torch.set_num_threads(threads)


def run_in_child(payload: bytes, connection: Any, threads: int | None) -> None:
    """The job's process: run the job as Hydra does and send its JobReturn back."""
    limit_threads(threads)
    hydra_context, config, task_function, singleton_state, idx, overrides = cloudpickle.loads(
        payload
    )
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = job_config(hydra_context, config, idx, overrides)
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    connection.send_bytes(cloudpickle.dumps(ret))


class ProcessLauncher(Launcher):
    """Each job in a spawned process of its own, `n_jobs` at a time (-1: one per CPU)."""

    def __init__(
        self,
        n_jobs: int = -1,
        threads_per_job: int | str | None = "auto",
        called: str = "processes",
        **joblib_schema: Any,
    ) -> None:
        if called != "processes":
            log.info(
                f"hydra/launcher={called}: aelab's process launcher (hydra/launcher=processes), "
                "each job in a process of its own"
            )
        for key, value in joblib_schema.items():
            if key not in JOBLIB_DEFAULTS or value != JOBLIB_DEFAULTS[key]:
                raise ConfigError(
                    f"hydra.launcher.{key}={value!r} does not apply: this launcher runs each job "
                    "in a process of its own and takes n_jobs only"
                )
        if n_jobs == 0 or n_jobs < -1:
            raise ConfigError(f"hydra.launcher.n_jobs={n_jobs}: a positive number, or -1")
        self.n_jobs = n_jobs if n_jobs > 0 else os.cpu_count() or 1
        job_threads(threads_per_job, self.n_jobs)  # checked before anything runs
        self.threads_per_job = threads_per_job
        self.threads: int | None = None
        self.stopping = threading.Event()  # set by SIGTERM, or a job that it stopped
        self.running: set[multiprocessing.process.BaseProcess] = set()
        self.lock = threading.Lock()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        # divided among the jobs that run at once: one trial at a time gets every core
        self.threads = job_threads(self.threads_per_job, max(1, min(self.n_jobs, len(jobs))))
        each = "" if self.threads is None else f", {self.threads} thread(s) each"
        log.info(f"Launching {len(jobs)} jobs, {self.n_jobs} at a time{each}, in {sweep_dir}")
        self.stopping.clear()
        previous = signal.signal(signal.SIGTERM, self.stop)
        try:
            with ThreadPoolExecutor(self.n_jobs, thread_name_prefix="aelab-job") as pool:
                return list(pool.map(lambda job: self.run(job[0], job[1], state), jobs))
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self, signum: int, frame: object) -> None:
        """SIGTERM to the sweep: the running jobs get it too, and no later job starts."""
        log.warning("SIGTERM: the running jobs stop after a checkpoint; the others do not start")
        self.stopping.set()
        with self.lock:
            for process in self.running:
                process.terminate()

    def run(self, idx: int, overrides: list[str], singleton_state: dict) -> JobReturn:
        """Run job `idx` in a new process and wait for it; a process that dies without an
        answer (killed) becomes a failed job, recorded in its folder."""
        if self.stopping.is_set():
            stop = SweepStopped(str(not_started(idx)))
            return self.job_return(idx, overrides, JobStatus.FAILED, stop)
        log.info(f"\t#{idx} : {' '.join(overrides)}")
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        payload = cloudpickle.dumps(
            (self.hydra_context, self.config, self.task_function, singleton_state, idx, overrides)
        )
        start = time.perf_counter()
        process = context.Process(
            target=run_in_child, args=(payload, send, self.threads), name=f"job-{idx}"
        )
        with self.lock:
            process.start()
            self.running.add(process)
        if self.stopping.is_set():  # SIGTERM came between the check above and the start
            process.terminate()
        send.close()  # the child holds the only writer: its death ends the wait below
        try:
            answer = receive.recv_bytes()
        except EOFError:
            answer = None
        process.join()
        with self.lock:
            self.running.discard(process)
        if answer is not None:
            ret = cloudpickle.loads(answer)
            if stopped(ret):
                self.stopping.set()
            return ret
        # join() has returned: the exit code is set
        exitcode: int = process.exitcode  # type: ignore[assignment]
        if exitcode == -signal.SIGTERM:  # stopped before its own handler was in place
            self.stopping.set()
            message = f"job {idx} stopped by SIGTERM before training; rerun to run it"
            return self.job_return(idx, overrides, JobStatus.FAILED, SweepStopped(message))
        sweep_config = job_config(self.hydra_context, self.config, idx, overrides)
        record = killed_record(
            idx, list(sweep_config.hydra.overrides.task), exitcode, time.perf_counter() - start
        )
        write_record(job_folder(sweep_config), record)
        log.error(f"job {idx} ({record['overrides']}) failed: {record['error']}")
        value = recorded_value(record, sweep_config.get("optimized_metric"))
        return self.job_return(idx, overrides, JobStatus.COMPLETED, value, sweep_config)

    def job_return(
        self,
        idx: int,
        overrides: list[str],
        status: JobStatus,
        value: Any,
        sweep_config: DictConfig | None = None,
    ) -> JobReturn:
        """What Hydra's own launchers return for a job whose process sent no answer: `value`
        is the sweeper's value, or the exception that Hydra raises for a failed job."""
        if sweep_config is None:
            sweep_config = job_config(self.hydra_context, self.config, idx, overrides)
        return JobReturn(
            overrides=overrides,
            cfg=sweep_config,
            hydra_cfg=sweep_config,
            working_dir=str(job_folder(sweep_config)),
            task_name=sweep_config.hydra.job.name,
            status=status,
            _return_value=value,
        )


def job_folder(sweep_config: DictConfig) -> Path:
    """The job's own folder, where its record goes."""
    return Path(sweep_config.hydra.sweep.dir) / str(sweep_config.hydra.sweep.subdir)


def stopped(ret: JobReturn) -> bool:
    """Whether the job was stopped by SIGTERM (`aelab.sweeps.callbacks.SweepStop` makes its
    Interrupted a SweepStopped; a config without that callback leaves it)."""
    return isinstance(job_error(ret), Interrupted | SweepStopped)
