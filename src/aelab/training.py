"""Training, top to bottom: config -> data, model, callbacks, loggers, trainer -> fit -> test
the best checkpoint -> the metrics (and the one a sweep optimizes).

`python train.py model=vae data=fashion` reaches `train` through aelab.train, the command line
that answers `--help` before this module (and torch with it) is imported. What a run does with
its folder (resuming, the lock, the saved config) is one call each into aelab.runfolder.
"""

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from aelab import runfolder, speedups
from aelab.data import ImageDataModule
from aelab.errors import RESUME_HINT, ConfigError, Interrupted
from aelab.loggers.hparams import compared_hparams
from aelab.loggers.runs import closing, log_final_metrics, log_run_start
from aelab.quiet import quiet_third_parties
from aelab.validation import building, check_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Fit, test the best checkpoint, and return `cfg.optimized_metric` for sweepers."""
    return optimized(cfg, fit_and_test(cfg))


def fit_and_test(cfg: DictConfig) -> dict[str, float]:
    """Fit the model and test its best checkpoint. Returns the final metrics, also kept as
    `<run>/metrics.json`: the best checkpoint's validation metrics (`val/loss`, ..., with
    `best_epoch`), its test metrics and the last logged training metrics."""
    check_config(cfg)
    quiet_third_parties()
    seed = L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, seed)
    fetch_data(datamodule)
    model = build_model(cfg, list(datamodule.image_shape))
    ckpt_path = runfolder.starting_point(cfg, model)
    with runfolder.holding(cfg):
        loggers = instantiate_all(cfg.get("logger"))
        trainer = make_trainer(cfg, loggers)
        log.info(devices_line(trainer))
        if cfg.speedups:
            speedups.apply(trainer, model)
        if loggers:
            config = OmegaConf.to_yaml(cfg, resolve=True)
            log_run_start(loggers, compared_hparams(cfg, seed), config, runfolder.git_state())
        with closing(loggers):
            fit(cfg, trainer, model, datamodule, ckpt_path)
            metrics = best_and_tested(cfg, trainer, model, datamodule)
            log_final_metrics(loggers, metrics, trainer.global_step)
        runfolder.save_metrics(cfg, metrics)
    return metrics


def build_datamodule(cfg: DictConfig, seed: int) -> ImageDataModule:
    """The datamodule of `cfg.data`; what its constructor rejects is one line naming `data`."""
    with building("data"):
        return instantiate(cfg.data, seed=seed)


def fetch_data(datamodule: L.LightningDataModule) -> None:
    """Download the data once per node, before the image shape is read: local rank 0 fetches,
    the node's other processes wait until the files are complete."""
    if runfolder.local_rank() == 0:
        datamodule.prepare_data()
    else:
        datamodule.wait_for_files()  # type: ignore[attr-defined]  # an aelab ImageDataModule


def build_model(cfg: DictConfig, image_shape: list[int]) -> L.LightningModule:
    """The model of `cfg.model` for images of `image_shape`, its network and loss built; what
    their constructors reject is one line naming `model`."""
    with building("model"):
        return instantiate(cfg.model, image_shape=image_shape, _convert_="all")


def instantiate_all(group: DictConfig | None) -> list:
    """Every entry of a group such as `callbacks` or `logger` that has a _target_."""
    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def make_trainer(cfg: DictConfig, loggers: list) -> L.Trainer:
    """The Trainer of `cfg.trainer`, with the config's callbacks and `loggers`."""
    extra = speedups.trainer_arguments(bool(cfg.trainer.get("profiler"))) if cfg.speedups else {}
    return instantiate(
        cfg.trainer,
        callbacks=instantiate_all(cfg.get("callbacks")),
        logger=loggers or False,
        **extra,
        **runfolder.slurm_trainer_arguments(cfg.trainer),
    )


def devices_line(trainer: L.Trainer) -> str:
    """What the run trains on, in place of Lightning's "GPU available" lines (its INFO is
    turned down, aelab/quiet.py): `Training on cpu, 1 process, precision 32-true`; under DDP
    each process says which one it is (`process 2 of 2`), as Lightning's own lines did."""
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    size = trainer.world_size
    who = f"process {trainer.global_rank + 1} of {size}" if size > 1 else "1 process"
    return f"Training on {accelerator}, {who}, precision {trainer.precision}"


def fit(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
) -> None:
    """`trainer.fit`, from `ckpt_path` when resuming; SIGTERM (after its checkpoint) is one
    line saying how to resume."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise Interrupted(
            f"stopped by SIGTERM at step {trainer.global_step}, after saving "
            f"{runfolder.checkpoints(cfg)}; {RESUME_HINT}"
        ) from None


def best_and_tested(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
) -> dict[str, float]:
    """Load the best checkpoint into `model` and test it: the last training metrics, the best
    checkpoint's validation metrics and `best_epoch`, and the test metrics."""
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {k: v for k, v in logged.items() if k.startswith("train/")}
    saving = trainer.checkpoint_callback
    best = saving.best_model_path if isinstance(saving, ModelCheckpoint) else ""
    if best:
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        metrics |= checkpoint.get("val_metrics", {}) | {"best_epoch": float(checkpoint["epoch"])}
    else:
        log.warning("No best checkpoint was saved: testing the weights at the end of training")
        metrics |= logged
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics


def optimized(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of `cfg.optimized_metric` (None when it is null): for `val/...`, its value in
    the tested, best checkpoint."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]
