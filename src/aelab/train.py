"""The command line of training: `python train.py model=vae data=fashion` (or `aelab-train`).

Only Hydra and OmegaConf are imported here, so `--help` and `--cfg job` answer without torch;
the training itself (aelab.training) is imported once the config has composed, the one place
where imports wait. A single run that is refused leaves nothing behind; a sweep's job is run
through aelab.sweeps.jobs, which records it and never lets its failure stop the others.
"""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab.cli import run_app
from aelab.config import CONFIG_MODULE
from aelab.errors import report_user_errors
from aelab.validation import check_files


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    absolute_paths(cfg)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from aelab.sweeps.jobs import run_sweep_job
        from aelab.training import fit_and_test, optimized

        return run_sweep_job(cfg, fit_and_test, optimized)
    return run(cfg, refused=lambda: discard_refused_run(cfg))


def run(cfg: DictConfig, refused: Callable[[], None] | None = None) -> float | None:
    """One training run as the command line starts it: a config or file it refuses is one
    `error:` line and exit code 1, after `refused()` has cleared what the run wrote."""
    with report_user_errors(refused):
        check_files(cfg)  # a wrong checkpoint file is refused before torch loads
        from aelab.training import train

        return train(cfg)


def absolute_paths(cfg: DictConfig) -> None:
    """Make the data, log and cache folders absolute, so that the saved run config points to
    them from anywhere (aelab.eval run from another folder reads the same data)."""
    for key in ("data_dir", "log_dir", "cache_dir"):
        cfg.paths[key] = str(Path(cfg.paths[key]).expanduser().absolute())


def discard_refused_run(cfg: DictConfig) -> None:
    """A refused run leaves nothing behind: a new run's folder goes while it holds only what
    Hydra wrote at start-up (its `.hydra/` record and the log); a refused resume removes only
    the record it added to the run it names (`.hydra/resumed/<timestamp>/`)."""
    folder = Path(cfg.paths.output_dir)
    subdir = HydraConfig.get().output_subdir
    if subdir and Path(subdir).parts[:2] == (".hydra", "resumed"):
        shutil.rmtree(folder / subdir, ignore_errors=True)
        for parent in (folder / subdir).parents:  # .hydra/resumed, .hydra: when left empty
            if parent == folder or any(parent.iterdir()):
                break
            parent.rmdir()
    logging.shutdown()  # Hydra's log file handler closes before its file goes
    written = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if written <= {".hydra", f"{HydraConfig.get().job.name}.log"}:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    """Console-script entry point (`aelab-train`, `python train.py`)."""
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
