"""What every logger gets beyond Lightning's `Logger` API: the hyperparameters runs are compared
by, the config, the final metrics (those of the tested checkpoint), pictures and the run's end.

One dispatch style: aelab's loggers (TensorBoard, MLflow, W&B) each have the methods they
need, looked up by name; a logger without one (Lightning's CSV, or any other) gets the default
written here:

- `log_config(config_yaml, git)`: keep the composed config (default: nothing; the run folder
  has `config.yaml`);
- `log_final_metrics(metrics, step)`: default `final/<name>` at the last step, then `save()`;
- `add_image(tag, image, step)`, `add_figure(tag, figure, step)`: show pictures
  (`aelab.loggers.media`; default: none);
- `end_run(failed)`: close the run when training ends (default: Lightning finalizes it).
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.loggers import Logger

from aelab.loggers.hparams import SINGLE_RUN, run_name

FINAL = "final/"  # the final metrics' prefix in loggers without a summary of their own


def job_name() -> str | None:
    """A multirun job's name, the overrides that tell it apart (`latent_dim=8`); None in a
    single run, where MLflow and W&B name it themselves."""
    name = run_name()
    return None if name == SINGLE_RUN else name


def log_run_start(
    loggers: Iterable[Logger], hparams: dict[str, Any], config_yaml: str, git: dict[str, Any]
) -> None:
    """`hparams` (flat) with every logger; the whole config with those that keep it."""
    for logger in loggers:
        logger.log_hyperparams(hparams)
        log_config = getattr(logger, "log_config", None)
        if log_config is not None:
            log_config(config_yaml, git)


def log_final_metrics(loggers: Iterable[Logger], metrics: dict[str, float], step: int) -> None:
    """The tested checkpoint's `val/...` and `test/...` metrics as the run's own values: the
    logger's own way (TensorBoard: `final/...` with the HParams session's end; W&B: the run
    summary, what its runs table shows), else `final/val/loss`, ... at the last step (MLflow,
    CSV), so that the curves stay as trained."""
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
    """End each logger's run (started by `log_run_start`) when training ends, failed or not, by
    its `end_run` (W&B: a run stays open in its process otherwise, and the next run of a
    notebook would log into it). Lightning finalizes the others itself."""
    failed = True
    try:
        yield
        failed = False
    finally:
        for logger in loggers:
            end_run = getattr(logger, "end_run", None)
            if end_run is not None:
                end_run(failed)
