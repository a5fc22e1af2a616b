"""Errors that the entry points report as one clear line instead of a traceback."""

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class AelabError(Exception):
    """A problem the user can fix: the message says what is wrong and what is allowed."""


class ConfigError(AelabError):
    """A config value that cannot work (names the key and the allowed values)."""


class DataError(AelabError):
    """A missing or malformed data file (names the file and what is wrong)."""


class TrainingDiverged(AelabError):
    """The loss became NaN or infinite (names the step and the last good checkpoint)."""


class Interrupted(AelabError):
    """SIGTERM (a preempted job) stopped training after a checkpoint was written."""


RESUME_HINT = "resume with ckpt_path=last"  # how a single run goes on after `Interrupted`


class SweepStopped(BaseException):
    """A job of a sweep was stopped by SIGTERM. Not an Exception: Hydra's sweepers raise a failed
    job's exception at the end, and one that is an Exception becomes Hydra's traceback; this one
    passes through to the entry point (`aelab.cli.run_app`), which says it in one line."""


class WriteFailed(AelabError):
    """A checkpoint could not be written (names the path and the cause; the previous one stays)."""


class RunLocked(AelabError):
    """Another live run is writing to this run folder."""


def root_cause(err: BaseException) -> BaseException:
    """The AelabError behind `err` (Hydra's instantiate wraps what the code raised), else the
    innermost cause."""
    while not isinstance(err, AelabError) and err.__cause__ is not None:
        err = err.__cause__
    return err


@contextmanager
def report_user_errors(refused: Callable[[], None] | None = None) -> Iterator[None]:
    """An AelabError (also one that Hydra's instantiate wrapped) becomes one `error:` line and
    exit code 1, after `refused()` has cleared what the refused command wrote;
    HYDRA_FULL_ERROR=1 shows the traceback instead. Other errors pass."""
    try:
        yield
    except Exception as err:
        problem = root_cause(err)
        if not isinstance(problem, AelabError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if refused is not None:
            refused()
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None
