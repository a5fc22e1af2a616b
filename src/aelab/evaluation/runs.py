"""A trained run, rebuilt from its checkpoint and the config saved beside it; the checkpoints
of a sweep (or a list) to evaluate."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aelab.config import RUN_CONFIG
from aelab.data import ImageDataModule
from aelab.errors import ConfigError
from aelab.models import AutoencoderModule
from aelab.validation import check_checkpoint, load_checkpoint


@dataclass
class Run:
    """A run's resolved config and its model with the checkpoint's weights (on the CPU)."""

    config: DictConfig
    model: AutoencoderModule

    def datamodule(self, data_dir: str | None = None) -> ImageDataModule:
        """The run's data, read from `data_dir` or else from the run's own `paths.data_dir`
        (a source's paths under that folder move to `data_dir`), prepared and set up (only what
        needs images asks for it: samples need none)."""
        data = cast(dict, OmegaConf.to_container(self.config.data))
        if data_dir is not None:
            own = Path(self.config.paths.data_dir)
            for key, value in data["source"].items():
                if isinstance(value, str) and Path(value).is_relative_to(own):
                    data["source"][key] = str(Path(data_dir) / Path(value).relative_to(own))
        datamodule = instantiate(data, seed=self.config.get("seed") or 0)
        datamodule.prepare_data()
        datamodule.setup("test")
        return datamodule


def load_run(ckpt_path: str | Path) -> Run:
    """The run of `<run>/checkpoints/NAME.ckpt`, from `<run>/config.yaml`. The image shape
    comes from the checkpoint, so no data is read here."""
    ckpt_path = Path(ckpt_path)
    config_file = ckpt_path.absolute().parent.parent / RUN_CONFIG
    if not config_file.is_file():
        raise ConfigError(
            f"ckpt_path={str(ckpt_path)!r}: no saved run config at {config_file}; give a "
            "checkpoint inside its run folder (<run>/checkpoints/*.ckpt)"
        )
    config = OmegaConf.load(config_file)
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{config_file}: not a run config (it holds no mapping)")
    checkpoint = load_checkpoint(ckpt_path)
    image_shape = list(checkpoint["hyper_parameters"].get("image_shape", ()))
    model = instantiate(config.model, image_shape=image_shape, _convert_="all")
    model.load_state_dict(check_checkpoint(ckpt_path, model, checkpoint)["state_dict"])
    return Run(config, model.eval())


@dataclass
class Job:
    """One checkpoint of a sweep (or of a list) to evaluate, or why there is none."""

    job: int
    overrides: str
    checkpoint: Path | None
    status: str = "ok"  # a job whose training failed or was pruned keeps that status
    error: str = ""


def tested_checkpoint(job_dir: Path, best_epoch: float | None) -> Path:
    """The checkpoint a finished sweep job tested: its best one, saved at the epoch that its
    `result.json` names (`best_epoch`), whatever the checkpoint's file name."""
    import torch

    from aelab.config import RESUMABLE

    folder = job_dir / "checkpoints"
    if best_epoch is None:
        raise ConfigError(f"{job_dir}: its result.json names no best_epoch (no best checkpoint)")
    candidates = [
        p
        for p in sorted(folder.glob("*.ckpt"))
        if p.name not in RESUMABLE and not p.name.startswith("last")
    ]
    tested = [
        p
        for p in candidates
        if torch.load(p, map_location="cpu", weights_only=True, mmap=True).get("epoch")
        == best_epoch
    ]
    if not tested:
        raise ConfigError(f"{folder}: no checkpoint of epoch {best_epoch:.0f}, the one it tested")
    if len(tested) > 1:
        raise ConfigError(
            f"{folder}: {', '.join(p.name for p in tested)} are all of epoch {best_epoch:.0f}: "
            "which one was tested is unknown; give the checkpoint itself"
        )
    return tested[0]


def jobs_to_evaluate(ckpt_path: str | Path | Sequence[str]) -> tuple[list[Job], Path | None]:
    """The checkpoints that `ckpt_path` names, and the folder their tables belong in:

    - a multirun's folder: every job's tested checkpoint (from `<job>/result.json`), in job
      order; a job whose training failed, or left no such checkpoint, is one without; the
      folder is the multirun's;
    - a list of checkpoints (inside their run folders), grouped by their runs' overrides; no
      folder: the evaluation's own.
    """
    from aelab.sweeps.jobs import RESULT_FILE, read_record

    if isinstance(ckpt_path, str | Path):
        sweep_dir = Path(ckpt_path)
        job_dirs = sorted(p.parent for p in sweep_dir.glob(f"*/{RESULT_FILE}"))
        if not job_dirs:
            raise ConfigError(
                f"ckpt_path={str(ckpt_path)!r}: no job of a multirun in this folder "
                f"(no */{RESULT_FILE}); give a checkpoint, a multirun's folder or a list of "
                "checkpoints"
            )
        jobs = []
        for job_dir in job_dirs:
            record = read_record(job_dir)
            assert record is not None, f"{job_dir}: the glob above found its record"
            job = Job(record["job"], record["overrides"], None, record["status"])
            if record["status"] != "ok":
                job.error = f"training {record['status']}: {record['error']}"
            else:
                try:
                    job.checkpoint = tested_checkpoint(job_dir, record["metrics"].get("best_epoch"))
                except ConfigError as err:
                    job.status, job.error = "failed", str(err)
            jobs.append(job)
        return sorted(jobs, key=lambda j: j.job), sweep_dir
    if not ckpt_path:
        raise ConfigError("ckpt_path=[]: give at least one checkpoint")
    jobs = []
    for number, path in enumerate(ckpt_path):
        overrides_file = Path(path).absolute().parent.parent / ".hydra" / "overrides.yaml"
        overrides: Any = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        jobs.append(Job(number, " ".join(map(str, overrides)), Path(path)))
    return jobs, None
