"""The Hydra callback that ends every multirun with its table (`aelab.sweeps.table`) and
its summary over seeds (`aelab.sweeps.summary`)."""

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aelab.errors import ConfigError

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
