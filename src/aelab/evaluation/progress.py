"""What an evaluation shows while it works: every phase (codes, probes, `nll_iw`, the feature
classifier's training, sampling, features) is a Rich bar with its count, the time spent and the
time left on a terminal; in a log (a file, a pipe, a cluster job) one line when it starts and
one when it ends, with its time."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("aelab.eval")

Advance = Callable[[int], None]


def no_progress(count: int) -> None:
    """What a function given no progress to advance advances."""


@contextmanager
def phase(name: str, total: int, unit: str = "images", show: bool = True) -> Iterator[Advance]:
    """A phase of `total` `unit`s: the block calls the yielded function with each step's count.
    `show=False` keeps it silent (a phase inside another one)."""
    start = time.perf_counter()
    console = Console(stderr=True)
    if not show:
        yield no_progress
        return
    if not console.is_terminal:
        log.info(f"{name}: {total:,} {unit} ...")
        yield no_progress
    else:
        columns = (
            TextColumn(f"{name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(name, total=total)
            yield lambda count: bar.advance(task, count)
    log.info(f"{name}: {total:,} {unit} in {time.perf_counter() - start:.1f} s")
