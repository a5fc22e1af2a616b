"""One job of a multirun: it records how it ended and never aborts the others.

Every job writes `result.json` in its folder: status (`ok`, `failed`, `pruned`), final metrics,
wall time, overrides and, for a failed or pruned job, why in one line. A job that diverges or
raises is recorded as failed and returns +inf, the worst value for the minimised metric (what
Optuna gets), instead of aborting the sweep. The `val/...` metrics are those of the job's best
checkpoint (the one it tested and returned to the sweeper), from the epoch in `best_epoch`.

A multirun rerun with the same `hydra.sweep.dir` is resumed: a job whose folder already holds
its record returns the recorded value without training again, and a job that was interrupted
goes on from its newest checkpoint.
"""

import contextlib
import gc
import io
import json
import logging
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from aelab.config import newest_checkpoint
from aelab.errors import RESUME_HINT, AelabError, ConfigError, Interrupted, root_cause

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"


def one_line(err: BaseException) -> str:
    """The root cause in one line (Hydra's instantiate wraps the real error)."""
    err = root_cause(err)
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, AelabError) else f"{type(err).__name__}: {text}"


def write_record(job_dir: Path, record: dict) -> None:
    """Write a job's record, whole or not at all (a reader never sees half a file)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    partial = job_dir / f".{RESULT_FILE}.partial"
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(job_dir / RESULT_FILE)


def read_record(job_dir: Path) -> dict | None:
    """The record a job left in its folder, or None if it never finished."""
    path = Path(job_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def killed_record(job: int, overrides: list[str], exitcode: int, seconds: float) -> dict:
    """The record of a job whose process ended without writing one (killed by a signal)."""
    if exitcode < 0:
        cause = f"killed by {signal.Signals(-exitcode).name}"
        if exitcode == -signal.SIGKILL:
            cause += " (out of memory? the kernel's OOM killer sends SIGKILL)"
    else:
        cause = f"its process exited with code {exitcode} before recording a result"
    return {
        "job": job,
        "overrides": " ".join(overrides),
        "status": "failed",
        "metrics": {},
        "error": cause,
        "seconds": round(seconds, 1),
    }


def recorded_value(record: dict, metric: str | None) -> float | None:
    """What a finished job returned to its sweeper."""
    if not metric:
        return None
    return record["metrics"][metric] if record["status"] == "ok" else math.inf


STOP_ASKED = threading.Event()  # a job of this process was interrupted: the sweep stops


def not_started(job: int) -> Interrupted:
    """The error of a job that a sweep asked to stop does not start (logged once here)."""
    message = f"job {job} not started: this sweep was asked to stop"
    log.warning(message)
    return Interrupted(message)


def job_error(ret: JobReturn) -> BaseException | None:
    """The exception that a failed job raised (None for a finished one), read without the line
    that Hydra's `return_value` prints on the way."""
    if ret.status is not JobStatus.FAILED:
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            ret.return_value  # noqa: B018 (raises the job's exception)
        except BaseException as err:
            return err
    return None


def is_pruned(err: BaseException) -> bool:
    """Whether a job stopped because its trial was pruned (Optuna is imported only by then)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(err, optuna.TrialPruned)


def differences(there: str, here: str) -> str:
    """Where two jobs' overrides differ, key by key: a folder spelled another way
    (`paths.data_dir`) is as plain as another model."""
    a, b = by_key(there), by_key(here)
    keys = [*a, *(key for key in b if key not in a)]
    return "; ".join(
        f"{key} ({a.get(key, 'unset')!r} there, {b.get(key, 'unset')!r} here)"
        for key in keys
        if a.get(key) != b.get(key)
    )


def by_key(overrides: str) -> dict[str, str]:
    """A job's overrides (as its record keeps them: one line) by key, values unquoted."""
    try:
        words = shlex.split(overrides)
    except ValueError:  # an unbalanced quote: compare the words as they are
        words = overrides.split()
    return dict(word.partition("=")[::2] for word in words)


def run_sweep_job(
    cfg: DictConfig,
    fit_and_test: Callable[[DictConfig], dict[str, float]],
    optimized: Callable[[DictConfig, dict[str, float]], float | None],
) -> float | None:
    """Run one job of a sweep; never let its failure abort the others."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    record = {"job": hydra_cfg.job.num, "overrides": " ".join(hydra_cfg.overrides.task)}
    done = read_record(job_dir)
    if done is not None:
        if done["overrides"] != record["overrides"]:
            raise ConfigError(
                f"hydra.sweep.dir={str(job_dir.parent)!r} holds another sweep: its job "
                f"{done['job']} ran {done['overrides']!r}, this one differs in "
                f"{differences(done['overrides'], str(record['overrides']))}; give a new "
                "hydra.sweep.dir, or that sweep's values to resume it"
            )
        log.info(
            f"job {done['job']} finished in an earlier run of this sweep ({done['status']}):"
            " read back, not run again"
        )
        return recorded_value(done, cfg.get("optimized_metric"))
    if STOP_ASKED.is_set():
        raise not_started(hydra_cfg.job.num)
    if cfg.get("ckpt_path") is None and newest_checkpoint(job_dir / "checkpoints"):
        log.info(f"job {record['job']} was interrupted: resuming from its newest checkpoint")
        cfg.ckpt_path = "last"
    start = time.perf_counter()
    try:
        metrics = fit_and_test(cfg)
        value = optimized(cfg, metrics)
        record |= {"status": "ok", "metrics": metrics, "error": ""}
        if value is not None and not math.isfinite(value):
            record |= {"status": "failed", "error": f"{cfg.optimized_metric} is {value}"}
            value = math.inf
    except Interrupted as err:
        # asked to stop (SIGTERM, SLURM's warning signal): the job keeps no record, so that a
        # rerun resumes it from its checkpoint, and the jobs after it in this process do not
        # start (Hydra's launcher would run them)
        STOP_ASKED.set()
        what = str(err).removesuffix(f"; {RESUME_HINT}")
        log.error(f"job {record['job']} ({record['overrides']}) {what}")
        raise Interrupted(
            f"job {record['job']}: {what}; the sweep stops here: rerun the same command to "
            "resume this job and run the rest"
        ) from err
    except Exception as err:
        status = "pruned" if is_pruned(err) else "failed"
        record |= {"status": status, "metrics": {}, "error": one_line(err)}
        if status == "failed":
            log.error(f"job {record['job']} ({record['overrides']}) failed: {record['error']}")
        value = math.inf
    # The job's Trainer, model and dataset (on the GPU too) sit in reference cycles that
    # Python's cyclic collector may leave for several jobs; jobs share one process.
    gc.collect()
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_record(job_dir, record)
    return value
