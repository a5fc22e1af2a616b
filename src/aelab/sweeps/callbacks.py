"""The Hydra callback that ends every multirun with its table (`aelab.sweeps.table`) and
its summary over seeds (`aelab.sweeps.summary`)."""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ResultsTable(Callback):
    """Hydra callback: after any multirun, one table of every job and their summary over seeds
    (CSV, Markdown, console)."""

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
        write_summary(sweep_dir, collect(sweep_dir))
