"""Evaluation entry point: `python -m aelab.eval ckpt_path=PATH` (or `aelab-eval ...`).

Tests a checkpoint on the official test set with only the checkpoint and its run's saved
config (and the run's data folder, unless `data_dir=...` names another): the training metrics
under the same names (`test/loss`, ...), plus the VAE's importance-weighted likelihood
`test/nll_iw` and the k-NN and linear-probe accuracies of the latent codes (`test/knn_acc`,
`test/linear_acc`) beside the same two on raw pixels. Everything runs on the device the
Trainer chose (`accelerator=...`). Printed as a table and logged to TensorBoard in the
evaluation's own run folder, with the latent pictures (projector, scatter, interpolation,
traversal).

Given a multirun's folder (`ckpt_path=logs/train/multiruns/<timestamp>`), it evaluates every
job's tested (best) checkpoint and writes `eval_results.csv/md` (one row per job) and
`eval_summary.csv/md` (grouped by every override but `seed`: mean, std, n) into that folder;
given a list (`ckpt_path=[a.ckpt,b.ckpt]`), the same into its own run folder. Jobs whose
training failed, or that left no checkpoint, are rows marked failed.
"""

import gc
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from aelab.config import CONFIG_MODULE, run_app
from aelab.train import report_user_errors

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """All test metrics of the checkpoint `cfg.ckpt_path`."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from rich.console import Console
    from rich.table import Table

    from aelab.evaluation.likelihood import ImportanceWeighted, importance_weighted_nll
    from aelab.evaluation.pictures import log_latent_pictures
    from aelab.evaluation.probes import knn_accuracy, latent_codes, linear_probe_accuracy
    from aelab.evaluation.runs import load_run
    from aelab.models.vae import DISCRETE, bits_per_dim
    from aelab.sweeps.table import number
    from aelab.train import instantiate_all, quiet_lightning_console

    quiet_lightning_console()
    L.seed_everything(cfg.seed)
    run = load_run(cfg.ckpt_path)
    model, datamodule = run.model, run.datamodule(cfg.get("data_dir"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=1, logger=loggers or False, enable_checkpointing=False
    )
    # The slow metrics first, on the Trainer's device: after `test`, Lightning's teardown moves
    # the model back to the CPU.
    model.to(trainer.strategy.root_device)
    metrics: dict[str, float] = {}
    train, test = datamodule.train_set, datamodule.test_set
    if datamodule.classes is None:
        log.info("The data has no labels: no test/knn_acc, test/linear_acc (nor on pixels)")
    else:
        train_y, test_y = train.labels.cpu(), test.labels.cpu()
        train_z, test_z = latent_codes(model, train.images), latent_codes(model, test.images)
        train_px = train.images.flatten(1).float().cpu()
        test_px = test.images.flatten(1).float().cpu()
        metrics["test/knn_acc"] = knn_accuracy(train_z, train_y, test_z, test_y, cfg.knn_k)
        metrics["test/linear_acc"] = linear_probe_accuracy(train_z, train_y, test_z, test_y)
        metrics["test/knn_acc_pixels"] = knn_accuracy(train_px, train_y, test_px, test_y, cfg.knn_k)
        metrics["test/linear_acc_pixels"] = linear_probe_accuracy(
            train_px, train_y, test_px, test_y
        )
    if isinstance(model, ImportanceWeighted) and cfg.iw_samples > 0:
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            metrics["test/nll_iw"] = importance_weighted_nll(
                model, test.images, cfg.iw_samples, progress=True
            )
        if getattr(model, "likelihood", None) in DISCRETE:  # bits/dim from the same estimate
            metrics["test/bpd_iw"] = bits_per_dim(metrics["test/nll_iw"], model.dims)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            log_latent_pictures(lg.experiment, model, datamodule, step=0)
    trainer.test(model, datamodule=datamodule)
    metrics |= {name: float(value) for name, value in trainer.callback_metrics.items()}

    for lg in loggers:
        lg.log_metrics(metrics, step=0)
        lg.finalize("success")
    table = Table(title=f"{run.config.model._target_.rsplit('.', 1)[-1]} from {cfg.ckpt_path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        table.add_row(name, number(metrics[name]))
    Console().print(table)
    return metrics


def evaluate_all(cfg: DictConfig) -> list[dict]:
    """Evaluate every checkpoint of a multirun's folder or a list (`cfg.ckpt_path`), each with
    its events in `<this run>/<job>/`, and write the per-job table and the summary over seeds."""
    from aelab.evaluation.runs import jobs_to_evaluate
    from aelab.sweeps.jobs import one_line
    from aelab.sweeps.summary import metric_columns, write_summary
    from aelab.sweeps.table import write_table

    jobs, folder = jobs_to_evaluate(cfg.ckpt_path)
    records = []
    for job in jobs:
        record = {"job": job.job, "overrides": job.overrides, "status": job.status}
        record |= {"metrics": {}, "error": job.error}
        start = time.perf_counter()
        if job.checkpoint is not None:
            own = Path(cfg.paths.output_dir) / str(job.job)
            one = {"ckpt_path": str(job.checkpoint), "paths": {"output_dir": str(own)}}
            try:
                record["metrics"] = evaluate(OmegaConf.merge(cfg, one))
            except Exception as err:
                record |= {"status": "failed", "error": one_line(err)}
        record["seconds"] = round(time.perf_counter() - start, 1)
        records.append(record)
        gc.collect()  # the job's Trainer, model and data sit in reference cycles
    folder = folder or Path(cfg.paths.output_dir)
    write_table(folder, records, "eval_results", metric_columns(records))
    write_summary(folder, records, "eval_summary")
    return records


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with report_user_errors():
        if isinstance(cfg.ckpt_path, ListConfig) or Path(cfg.ckpt_path).is_dir():
            evaluate_all(cfg)
        else:
            evaluate(cfg)


def main() -> None:
    """Console-script entry point (`aelab-eval`, `python -m aelab.eval`)."""
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
