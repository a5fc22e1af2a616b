"""The Hydra callbacks of every multirun: its table (`aelab.sweeps.table`) and summary over
seeds (`aelab.sweeps.summary`) at the end, and a stopped job's one-line report."""

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aelab.errors import ConfigError, Interrupted, SweepStopped
from aelab.sweeps.jobs import job_error

log = logging.getLogger(__name__)


class ResultsTable(Callback):
    """Hydra callback: after any multirun, one table of every job and their summary over seeds
    (CSV, Markdown, console); with a `baseline` group (as the summary names it: its overrides
    but seed and those every job shares), the summary compares every group with it on the
    `compared` metrics (Welch's t over seeds)."""

    def __init__(
        self, baseline: str | None = None, compared: Sequence[str] = ("val/loss", "test/loss")
    ) -> None:
        self.baseline, self.compared = baseline, list(compared)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # pandas, only once a multirun ends: Hydra makes this callback for every run
        from aelab.sweeps.summary import write_summary
        from aelab.sweeps.table import collect, write_table

        sweep_dir = Path(config.hydra.sweep.dir)
        write_table(sweep_dir)
        if config.hydra.sweeper.get("_target_", "").endswith(".OptunaSweeper"):
            # every trial of a search has values of its own: groups over seeds would be of one
            log.info("A search: no summary over seeds (optimization_results.yaml has the best)")
            return
        records = collect(sweep_dir)
        try:
            write_summary(sweep_dir, records, baseline=self.baseline, compared=self.compared)
        except ConfigError as err:  # the jobs have run: keep their summary, say what was wrong
            log.error(f"hydra.callbacks.results_table.{err}; the summary has no comparison")
            write_summary(sweep_dir, records)


class SweepStop(Callback):
    """Hydra callback: a job stopped by SIGTERM (`Interrupted`) hands its sweeper a
    `SweepStopped` instead, which Hydra's sweepers raise at the sweep's end as they raise any
    failed job's exception, but which their error report (for an Exception: a traceback) lets
    through to the entry point: the sweep ends in one `error:` line."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        err = job_error(job_return)
        if isinstance(err, Interrupted):
            job_return.return_value = SweepStopped(str(err))
