"""Training entry point: `python train.py model=vae data=fashion` (or `aelab-train ...`).

Only Hydra and OmegaConf are imported at module level, so `--help` and `--cfg job` answer
without loading torch; Lightning comes in when training starts.
"""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from aelab.config import CONFIG_DIR, RESUMABLE, run_app
from aelab.errors import AelabError, ConfigError, Interrupted
from aelab.sweeps import run_sweep_job
from aelab.validation import check_checkpoint, check_config

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a group such as `callbacks` or `logger` that has a _target_."""
    from hydra.utils import instantiate

    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def quiet_lightning_console() -> None:
    """Send Lightning's messages through Hydra's log handlers only (it adds its own console
    handler on import, which prints every line twice), minus its advertisement for LitLogger."""
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        lightning_logger.handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_nvml_probe_without_cuda() -> None:
    """Ask torch whether there is CUDA the usual way when there is none.

    Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import, so that asking never initialises
    CUDA (which would break forked DDP workers). Without an NVIDIA driver torch then tries to
    load NVML again on every such question, and Adam and AdamW ask on every step: 0.4 ms a
    training step here, paid by no tutorial. With no CUDA device there is nothing to initialise.
    """
    import torch

    if os.environ.get(NVML_CHECK) == "1" and not torch.cuda.is_available():
        del os.environ[NVML_CHECK]


def _log_final_metrics(loggers: list, hparams: dict, metrics: dict) -> None:
    """Fill TensorBoard's HParams dashboard: this run's config beside its final metrics, under
    `hparams/...` so that the `val/loss` curves get no extra point."""
    from lightning.pytorch.loggers import TensorBoardLogger

    final = {
        f"hparams/{name.replace('/', '_')}": float(value)
        for name, value in metrics.items()
        if name.startswith(("val/", "test/"))
    }
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger) and final:
            lg.log_hyperparams(hparams, metrics=final)
            # Lightning closed the writer after testing; this reopened it: flush and close it,
            # or the summaries may still sit in its queue when the process exits.
            lg.finalize("success")


def _resume_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last`: the newer of this run's last.ckpt (end of the last full epoch) and
    interrupted.ckpt (written on Ctrl-C or SIGTERM); otherwise the path as given."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "last":
        return ckpt_path
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    found = [folder / name for name in RESUMABLE if (folder / name).is_file()]
    if not found:
        raise ConfigError(
            f"ckpt_path=last: no run to resume, {folder} has no {' or '.join(RESUMABLE)}; "
            "give the checkpoint's path or hydra.run.dir=<the run's folder>"
        )
    return str(max(found, key=lambda p: p.stat().st_mtime))


def make_trainer(cfg: DictConfig, loggers: list) -> "L.Trainer":
    """The Trainer of `cfg.trainer` with the config's callbacks and `loggers`; with
    `trainer.profiler` null it gets `NoProfiler`, which spares Lightning's per-hook cost, and
    its callbacks (Lightning's own included) are not called at batches they do nothing at."""
    from hydra.utils import instantiate

    from aelab.callbacks.hooks import skip_inherited_batch_hooks
    from aelab.profiler import NoProfiler

    profiler = {} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}
    trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_all(cfg.get("callbacks")),
        logger=loggers or False,
        **profiler,
    )
    skip_inherited_batch_hooks(trainer.callbacks)
    return trainer


def fit_and_test(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, test its best checkpoint; the final metrics (`val/loss`, `test/loss`, ...)."""
    check_config(cfg)
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    quiet_lightning_console()
    skip_nvml_probe_without_cuda()

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape), _convert_="all")
    ckpt_path = _resume_path(cfg)
    if ckpt_path:
        check_checkpoint(ckpt_path, model)
        log.info(f"Resuming from {ckpt_path}")
    loggers = instantiate_all(cfg.get("logger"))
    trainer = make_trainer(cfg, loggers)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hparams = {key: resolved[key] for key in ("model", "data", "trainer", "seed")}
    for lg in loggers:
        lg.log_hyperparams(hparams)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise Interrupted(
            f"stopped by SIGTERM at step {trainer.global_step}, after saving "
            f"{Path(cfg.paths.output_dir) / 'checkpoints'}; resume with ckpt_path=last"
        ) from None
    metrics = dict(trainer.callback_metrics)

    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint was saved: testing the weights at the end of training")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(trainer.callback_metrics)

    _log_final_metrics(loggers, hparams, metrics)
    return {name: float(value) for name, value in metrics.items()}


def optimized(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of `cfg.optimized_metric` (None when it is null)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]


def train(cfg: DictConfig) -> float | None:
    """Fit the model, test its best checkpoint, and return `cfg.optimized_metric` for sweepers."""
    return optimized(cfg, fit_and_test(cfg))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, fit_and_test, optimized)
    with report_user_errors():
        return train(cfg)


@contextmanager
def report_user_errors() -> Iterator[None]:
    """An AelabError (also one that Hydra's instantiate wrapped) becomes one `error:` line and
    exit code 1; HYDRA_FULL_ERROR=1 shows the traceback instead. Other errors pass."""
    try:
        yield
    except Exception as err:
        problem = _user_error(err)
        if problem is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def _user_error(err: BaseException | None) -> AelabError | None:
    """The AelabError behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None and not isinstance(err, AelabError):
        err = err.__cause__
    return err


def main() -> None:
    """Console-script entry point (`aelab-train`, `python train.py`)."""
    run_app("train", _hydra_main)


if __name__ == "__main__":
    main()
