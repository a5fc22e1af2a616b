"""What a training run does with its folder, each one call from aelab.training: where it starts
from (a checkpoint to resume, weights to start from), holding the folder (the lock, the SLURM
marker, the saved config) and the final metrics."""

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.tree import Tree

from aelab.checkpoints import newest_intact
from aelab.config import (
    METRICS_FILE,
    RUN_CONFIG,
    SLURM_MARKER,
    newest_checkpoint,
    requeued_slurm_job,
    resumable_runs,
    run_choices,
)
from aelab.errors import ConfigError
from aelab.runlock import run_lock
from aelab.validation import check_checkpoint, check_same_run

log = logging.getLogger(__name__)


def local_rank() -> int:
    """This process's rank on its node, as the launcher (torchrun, srun, Lightning) says."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


def global_rank() -> int:
    """This process's rank among all of the run's processes (0 when it runs alone)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def checkpoints(cfg: DictConfig) -> Path:
    """The run's checkpoint folder."""
    return Path(cfg.paths.output_dir) / "checkpoints"


def starting_point(cfg: DictConfig, model: L.LightningModule) -> str | None:
    """The checkpoint to resume from (checked against `model` and this run's config), or None;
    with `init_from`, `model` gets that checkpoint's weights and the run starts anew."""
    ckpt_path = resume_path(cfg)
    if ckpt_path:
        check_checkpoint(ckpt_path, model)
        check_same_run(cfg, ckpt_path)
        log.info(f"Resuming from {ckpt_path}")
    elif cfg.get("init_from"):
        model.load_state_dict(check_checkpoint(cfg.init_from, model)["state_dict"])
        log.info(f"Starting from the weights of {cfg.init_from}")
    return ckpt_path


def resume_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` (or none in a requeued SLURM job whose run has checkpoints): the newest
    of this run's checkpoints that loads (last.ckpt, interrupted.ckpt, the best one);
    otherwise the path as given."""
    ckpt_path = cfg.get("ckpt_path")
    folder = checkpoints(cfg)
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


@contextmanager
def holding(cfg: DictConfig) -> Iterator[None]:
    """The run's folder, held by rank 0 for every process of the run (aelab.runlock): the
    SLURM job that started it marked (its requeue goes on there) and the config saved."""
    if global_rank() != 0:
        yield
        return
    output_dir = Path(cfg.paths.output_dir)
    with run_lock(output_dir):
        if "SLURM_JOB_ID" in os.environ:
            (output_dir / SLURM_MARKER).write_text(os.environ["SLURM_JOB_ID"])
        save_run_config(cfg)
        yield


def save_run_config(cfg: DictConfig) -> None:
    """Print the composed config as a tree (in a multirun, the first job's only, then one line
    per job: the trees differ only in the overrides) and keep it, resolved, as
    `<run>/config.yaml` (a resumed run keeps the one it was started with)."""
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


def save_metrics(cfg: DictConfig, metrics: dict[str, float]) -> None:
    """The final metrics as `<run>/metrics.json` (rank 0's; aelab.load_run reads them)."""
    if global_rank() == 0:
        (Path(cfg.paths.output_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def slurm_trainer_arguments(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Under SLURM, Lightning's SLURM plugin without its requeue: aelab's InterruptCheckpoint
    requeues at a batch's end, where Lightning's would save mid-step."""
    if not SLURMEnvironment.detect():
        return {}
    plugins = instantiate(trainer_cfg.get("plugins") or [])
    return {"plugins": [*plugins, SLURMEnvironment(auto_requeue=False)]}


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
