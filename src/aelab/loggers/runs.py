"""What every logger gets at a run's start and end: the hyperparameters runs are compared by,
the config, the final metrics (those of the tested checkpoint) and the run's close."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

FINAL = "final/"  # the final metrics' prefix in loggers without a summary of their own


def log_run_start(
    loggers: Iterable[Logger], hparams: dict[str, Any], config_yaml: str, git: dict[str, Any]
) -> None:
    """`hparams` (flat) with every logger; the whole config with those that keep it (aelab's
    TensorBoard, MLflow and W&B loggers have `log_config`)."""
    for logger in loggers:
        logger.log_hyperparams(hparams)
        log_config = getattr(logger, "log_config", None)
        if log_config is not None:
            log_config(config_yaml, git)


def log_final_metrics(loggers: Iterable[Logger], metrics: dict[str, float], step: int) -> None:
    """The tested checkpoint's `val/...` and `test/...` metrics as the run's own values, by the
    logger's `log_final_metrics` where it has one (aelab's TensorBoard: `final/...` with the
    HParams session's end; W&B: the run summary, what its runs table shows), else as
    `final/val/loss`, ... at the last step (MLflow, CSV), so that the curves stay as trained."""
    final = {name: value for name, value in metrics.items() if name.startswith(("val/", "test/"))}
    if not final:
        return
    for logger in loggers:
        own = getattr(logger, "log_final_metrics", None)
        if own is not None:
            own(final, step)
        else:
            logger.log_metrics({FINAL + name: value for name, value in final.items()}, step)
            logger.save()


@contextmanager
def closing(loggers: list[Logger]) -> Iterator[None]:
    """End each logger's run (started by `log_run_start`) when training ends, failed or not: a
    W&B run stays open in its process otherwise (the next run of a notebook would log into it).
    Lightning finalizes the other loggers itself."""
    failed = True
    try:
        yield
        failed = False
    finally:
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish(exit_code=1 if failed else 0)
