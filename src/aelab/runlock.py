"""One run per folder: a second run started in a folder that a live run is writing refuses.

The lock belongs to the run, not to a process: rank 0 holds it for every DDP rank of the run.
It is a small file (`<run>/.lock`) naming host, process and, under SLURM, the job, refreshed by
a heartbeat while the run lives. Advisory file locks (`flock`, `fcntl`) are not used: they are
unreliable on NFS and Lustre, where clusters keep their runs. A lock is stale, and taken over
with a warning, when its process is gone (same host), when its heartbeat stopped (another host,
after `STALE_S`), or when it is this SLURM job's own from before a requeue.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aelab.errors import RunLocked

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
HEARTBEAT_S = 15.0
STALE_S = 120.0  # a lock of another host whose heartbeat is older than this is stale


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "token": uuid.uuid4().hex,
        "started": time.time(),
        "heartbeat": time.time(),
    }


def stale_reason(lock: dict[str, Any], now: float | None = None) -> str | None:
    """Why the run that wrote `lock` no longer runs, or None if it may still."""
    me = _owner()
    requeued = me["slurm_restart"] > lock.get("slurm_restart", 0)
    if lock.get("slurm_job") and lock["slurm_job"] == me["slurm_job"] and requeued:
        return f"it is SLURM job {lock['slurm_job']}'s own, from before its requeue"
    return gone(lock, STALE_S, now)


def gone(
    who: Mapping[str, Any], stale_s: float, now: float | None = None, own_pid_alive: bool = True
) -> str | None:
    """Why the process that `who` names (`host`, `pid`, `heartbeat`: a run's lock, an Optuna
    worker's trial) no longer runs, or None if it may still. On this host its process is asked
    (`own_pid_alive=False`: this very process id is a dead one's, reused); on another host, a
    heartbeat older than `stale_s` says it stopped."""
    if who.get("host") == socket.gethostname():
        if who["pid"] == os.getpid() and not own_pid_alive:
            return f"its process id {who['pid']} is now this process's"
        try:
            os.kill(who["pid"], 0)
        except ProcessLookupError:
            return f"its process {who['pid']} is gone"
        except PermissionError:
            pass  # another user's live process
        return None
    age = (time.time() if now is None else now) - who.get("heartbeat", 0)
    return f"its heartbeat stopped {age:.0f} s ago" if age > stale_s else None


def _write(path: Path, lock: dict[str, Any]) -> None:
    partial = path.with_name(f"{path.name}.{lock['token']}")
    partial.write_text(json.dumps(lock))
    partial.replace(path)


def read_lock(folder: Path) -> dict[str, Any] | None:
    """The lock of the run writing `folder`, or None."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being replaced this instant, or damaged: treated as stale below


@contextmanager
def run_lock(folder: Path, heartbeat_s: float = HEARTBEAT_S) -> Iterator[dict[str, Any]]:
    """Hold `folder`'s lock while the block runs (refreshed every `heartbeat_s`), or raise
    RunLocked naming the live run that holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = _owner()
    try:  # O_EXCL: of two runs starting at the same instant, one creates the lock
        with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "w") as f:
            f.write(json.dumps(mine))
    except FileExistsError:
        held = read_lock(folder)
        reason = stale_reason(held) if held else "it cannot be read"
        if reason is None and held is not None:
            raise RunLocked(
                f"{folder} is being written by another run (process {held['pid']} on "
                f"{held['host']}, started {time.ctime(held['started'])}); wait for it, or give "
                "this run another hydra.run.dir"
            ) from None
        log.warning(f"taking over the lock of {folder}: {reason}")
        _write(path, mine)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            if (read_lock(folder) or {}).get("token") != mine["token"]:
                log.warning(f"{path} was taken over by another run")
                return
            _write(path, mine | {"heartbeat": time.time()})

    thread = threading.Thread(target=beat, daemon=True, name="aelab-run-lock")
    thread.start()
    try:
        yield mine
    finally:
        stop.set()
        thread.join()
        if (read_lock(folder) or {}).get("token") == mine["token"]:
            path.unlink(missing_ok=True)
