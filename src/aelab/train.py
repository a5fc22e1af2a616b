"""Training entry point: `python train.py model=vae data=fashion` (or `aelab-train ...`).

Only Hydra and OmegaConf are imported at module level, so `--help` and `--cfg job` answer
without loading torch; Lightning comes in when training starts.
"""

import json
import logging
import os
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf

from aelab.cli import run_app
from aelab.config import (
    CONFIG_MODULE,
    METRICS_FILE,
    RUN_CONFIG,
    SLURM_MARKER,
    newest_checkpoint,
    requeued_slurm_job,
    resumable_runs,
    run_choices,
)
from aelab.errors import ConfigError, Interrupted, report_user_errors
from aelab.quiet import quiet_third_parties
from aelab.runlock import run_lock
from aelab.sweeps.jobs import run_sweep_job
from aelab.validation import building, check_checkpoint, check_config, check_same_run

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a group such as `callbacks` or `logger` that has a _target_."""
    from hydra.utils import instantiate

    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def devices_line(trainer: "L.Trainer") -> str:
    """What the run trains on, in place of Lightning's "GPU available" lines (its INFO is
    turned down, aelab/quiet.py): `Training on cpu, 1 process, precision 32-true`; under DDP
    each process says which one it is (`process 2 of 2`), as Lightning's own lines did."""
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    size = trainer.world_size
    who = f"process {trainer.global_rank + 1} of {size}" if size > 1 else "1 process"
    return f"Training on {accelerator}, {who}, precision {trainer.precision}"


def local_rank() -> int:
    """This process's rank on its node, as the launcher (torchrun, srun, Lightning) says."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


def global_rank() -> int:
    """This process's rank among all of the run's processes (0 when it runs alone)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def git_state() -> dict[str, Any]:
    """The commit and dirty flag of the code that trains (the package's checkout, else the
    working directory's); nulls outside a git checkout."""
    for folder in (Path(__file__).parent, Path.cwd()):
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True
            )
            if commit.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=folder,
                capture_output=True,
                text=True,
            )
            return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
        except OSError:
            break
    return {"commit": None, "dirty": None}


def resume_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` (or none in a requeued SLURM job whose run has checkpoints): the newest
    of this run's checkpoints that loads (last.ckpt, interrupted.ckpt, the best one);
    otherwise the path as given."""
    from aelab.checkpoints import newest_intact

    ckpt_path = cfg.get("ckpt_path")
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    if ckpt_path is None and requeued_slurm_job() and newest_checkpoint(folder):
        log.info(f"SLURM requeued job {requeued_slurm_job()}: resuming its run")
        ckpt_path = "last"
    if ckpt_path != "last":
        return ckpt_path
    found = newest_intact(folder)
    if found is None:
        raise ConfigError(f"ckpt_path=last: {no_run_to_resume(cfg, folder.parent)}")
    return str(found[0])


def no_run_to_resume(cfg: DictConfig, run: Path) -> str:
    """Why `ckpt_path=last` found nothing in `run`, and the newest runs a user may have
    meant."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    wanted = f"model={choices.get('model')} data={choices.get('data')}"
    if (run / "checkpoints").is_dir():
        return f"{run} holds no checkpoint that loads; give the checkpoint's path"
    others = resumable_runs(Path(cfg.paths.log_dir) / cfg.task_name / "runs")[:5]
    if not others:
        return f"no run of {wanted} to resume, nor any other; start one without ckpt_path"
    listed = "; ".join(
        f"{other} (model={c['model']} data={c['data']})"
        for other, c in ((other, run_choices(other)) for other in others)
    )
    return (
        f"no run of {wanted} to resume. The newest runs: {listed}. Resume one with "
        "ckpt_path=<run>/checkpoints/last.ckpt and its model= and data="
    )


def make_trainer(cfg: DictConfig, loggers: list) -> "L.Trainer":
    """The Trainer of `cfg.trainer` with the config's callbacks (and, in a pruned search, the
    pruning callback) and `loggers` (and, with `speedups`, the profiler that costs nothing)."""
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from aelab import speedups
    from aelab.sweeps.optuna import pruning_callbacks

    extra = speedups.trainer_arguments(bool(cfg.trainer.get("profiler"))) if cfg.speedups else {}
    if SLURMEnvironment.detect():
        # InterruptCheckpoint requeues at a batch's end; Lightning's would save mid-step
        plugins = instantiate(cfg.trainer.get("plugins") or [])
        extra["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]
    return instantiate(
        cfg.trainer,
        callbacks=instantiate_all(cfg.get("callbacks")) + pruning_callbacks(cfg.optimized_metric),
        logger=loggers or False,
        **extra,
    )


def fetch_data(datamodule: "L.LightningDataModule") -> None:
    """Download the data once per node, before the image shape is read: local rank 0 fetches,
    the node's other processes wait until the files are complete."""
    if local_rank() == 0:
        datamodule.prepare_data()
    else:
        # an aelab ImageDataModule (cfg.data)
        datamodule.wait_for_files()  # type: ignore[attr-defined]


def save_run_config(cfg: DictConfig) -> None:
    """Print the composed config as a tree (in a multirun, the first job's only, then one line
    per job: the trees differ only in the overrides) and keep it, resolved, as
    `<run>/config.yaml` (a resumed run keeps the one it was started with)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from rich.console import Console
    from rich.tree import Tree

    resolved = cast(dict, OmegaConf.to_container(cfg, resolve=True))  # a DictConfig's
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg and hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.job.num > 0:
        log.info(f"Job {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task)}")
    else:
        tree = Tree("config", guide_style="dim")
        for key, value in resolved.items():
            if isinstance(value, dict):
                tree.add(f"[bold]{key}[/]").add(OmegaConf.to_yaml(value).strip())
            else:
                tree.add(f"[bold]{key}[/]: {value}")
        Console(stderr=True).print(tree)
    path = Path(cfg.paths.output_dir) / RUN_CONFIG
    if not path.exists():
        OmegaConf.save(OmegaConf.create(resolved), path)


def build_datamodule(cfg: DictConfig, seed: int) -> "L.LightningDataModule":
    """The datamodule of `cfg.data`; what its constructor rejects is one line naming `data`."""
    from hydra.utils import instantiate

    with building("data"):
        return instantiate(cfg.data, seed=seed)


def build_model(cfg: DictConfig, image_shape: list[int]) -> "L.LightningModule":
    """The model of `cfg.model` for images of `image_shape`, its network and loss built; what
    their constructors reject is one line naming `model`."""
    from hydra.utils import instantiate

    with building("model"):
        return instantiate(cfg.model, image_shape=image_shape, _convert_="all")


def fit_and_test(cfg: DictConfig) -> dict[str, float]:
    """Fit the model and test its best checkpoint. Returns the final metrics, also kept as
    `<run>/metrics.json`: the best checkpoint's validation metrics (`val/loss`, ..., with
    `best_epoch`), its test metrics and the last logged training metrics."""
    check_config(cfg)
    import lightning as L

    quiet_third_parties()
    seed = L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, seed)
    fetch_data(datamodule)
    # an aelab ImageDataModule (cfg.data)
    model = build_model(cfg, list(datamodule.image_shape))  # type: ignore[attr-defined]
    ckpt_path = resume_path(cfg)
    if ckpt_path:
        check_checkpoint(ckpt_path, model)
        check_same_run(cfg, ckpt_path)
        log.info(f"Resuming from {ckpt_path}")
    elif cfg.get("init_from"):
        model.load_state_dict(check_checkpoint(cfg.init_from, model)["state_dict"])
        log.info(f"Starting from the weights of {cfg.init_from}")
    output_dir = Path(cfg.paths.output_dir)
    with run_lock(output_dir) if global_rank() == 0 else nullcontext():
        if global_rank() == 0 and "SLURM_JOB_ID" in os.environ:
            (output_dir / SLURM_MARKER).write_text(os.environ["SLURM_JOB_ID"])
        return fit_and_test_locked(cfg, datamodule, model, ckpt_path, seed)


def fit_and_test_locked(
    cfg: DictConfig,
    datamodule: "L.LightningDataModule",
    model: "L.LightningModule",
    ckpt_path: str | None,
    seed: int,
) -> dict[str, float]:
    """`fit_and_test` once the run holds its folder."""
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from aelab import speedups
    from aelab.loggers.runs import closing, log_final_metrics

    if global_rank() == 0:
        save_run_config(cfg)
    loggers = instantiate_all(cfg.get("logger"))
    trainer = make_trainer(cfg, loggers)
    log.info(devices_line(trainer))
    if cfg.speedups:
        speedups.apply(trainer, model)
    log_run_start(loggers, cfg, seed)
    with closing(loggers):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:
            raise Interrupted(
                f"stopped by SIGTERM at step {trainer.global_step}, after saving "
                f"{Path(cfg.paths.output_dir) / 'checkpoints'}; resume with ckpt_path=last"
            ) from None
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")
        }
        saving = trainer.checkpoint_callback
        best = saving.best_model_path if isinstance(saving, ModelCheckpoint) else ""
        if best:
            checkpoint = torch.load(best, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint["state_dict"])
            metrics |= checkpoint.get("val_metrics", {}) | {
                "best_epoch": float(checkpoint["epoch"])
            }
        else:
            log.warning("No best checkpoint was saved: testing the weights at the end of training")
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule)
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
        log_final_metrics(loggers, metrics, trainer.global_step)
    if global_rank() == 0:
        (Path(cfg.paths.output_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


def log_run_start(loggers: list, cfg: DictConfig, seed: int) -> None:
    """Record what this run is compared by (`aelab.loggers.hparams`) with every logger, and
    its whole config with those that keep it (aelab.loggers.runs)."""
    from aelab.loggers.hparams import compared_hparams
    from aelab.loggers.runs import log_run_start as start

    if not loggers:
        return
    start(loggers, compared_hparams(cfg, seed), OmegaConf.to_yaml(cfg, resolve=True), git_state())


def optimized(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of `cfg.optimized_metric` (None when it is null): for `val/...`, its value in
    the tested, best checkpoint."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]


def absolute_paths(cfg: DictConfig) -> None:
    """Make the data, log and cache folders absolute, so that the saved run config points to
    them from anywhere (aelab.eval run from another folder reads the same data)."""
    for key in ("data_dir", "log_dir", "cache_dir"):
        cfg.paths[key] = str(Path(cfg.paths[key]).expanduser().absolute())


def train(cfg: DictConfig) -> float | None:
    """Fit the model, test its best checkpoint, and return `cfg.optimized_metric` for sweepers."""
    return optimized(cfg, fit_and_test(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    absolute_paths(cfg)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, fit_and_test, optimized)
    with report_user_errors(lambda: discard_refused_run(cfg)):
        return train(cfg)


def discard_refused_run(cfg: DictConfig) -> None:
    """A refused run leaves nothing behind: a new run's folder goes while it holds only what
    Hydra wrote at start-up (its `.hydra/` record and the log); a refused resume removes only
    the record it added to the run it names (`.hydra/resumed/<timestamp>/`)."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

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
