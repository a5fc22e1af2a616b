"""Evaluation entry point: `python -m aelab.eval ckpt_path=PATH` (or `aelab-eval ...`).

Tests a checkpoint on the official test set with only the checkpoint and its run's saved
config (and the run's data folder, unless `data_dir=...` names another): the training metrics
under the same names (`test/loss`, ...), plus the importance-weighted likelihood `test/nll_iw`
of every family that has one, the k-NN and linear-probe accuracies of the latent codes
(`test/knn_acc`, `test/linear_acc`) beside the same two on raw pixels, `test/recon_mse` (the
squared error per pixel of the reconstructions, the same measure for every family), the active
units of the stochastic layers (`test/active_units`; aelab.evaluation.active_units) and, for
every model that generates, the sample metrics (`test/fd_classifier`, `test/precision`,
`test/recall`, `test/fid`; aelab.evaluation.samples), `test/neg_elbo` (the -ELBO, whatever the
weights a model trained with) and, on data with ground-truth factors (`data=shapes`,
`data=dsprites`), the disentanglement metrics `test/mig`, `test/dci_disentanglement`,
`test/dci_completeness`, `test/dci_informativeness`, `test/sap` and `test/factor_vae_score`
(aelab.evaluation.disentanglement; `disentanglement.budget` points). Everything runs on the
device the Trainer chose (`accelerator=...`). Printed as a table and logged (`logger=...`,
TensorBoard by default) in the evaluation's own run folder, with the latent pictures (scatter,
interpolation, traversal; TensorBoard's projector too).

Given a multirun's folder (`ckpt_path=logs/train/multiruns/<timestamp>`), it evaluates every
job's tested (best) checkpoint and writes `eval_results.csv/md` (one row per job) and
`eval_summary.csv/md` (grouped by every override but `seed`: mean, std, n) into that folder;
given a list (`ckpt_path=[a.ckpt,b.ckpt]`), the same into its own run folder. Jobs whose
training failed, or that left no checkpoint, are rows marked failed.
"""

import gc
import json
import logging
import math
import time
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, ListConfig, OmegaConf

from aelab.cli import command
from aelab.errors import ConfigError
from aelab.quiet import quiet_third_parties
from aelab.validation import check_run_or_checkpoint

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """All test metrics of the checkpoint `cfg.ckpt_path`, printed and written to
    `metrics.json` and `metrics.csv` in this evaluation's folder."""
    check_inception_weights(cfg)
    check_run_or_checkpoint(cfg.ckpt_path)
    import lightning as L
    import torch

    from aelab.evaluation.active_units import active_unit_metrics
    from aelab.evaluation.likelihood import ImportanceWeighted, importance_weighted_nll
    from aelab.evaluation.pictures import log_latent_pictures
    from aelab.evaluation.progress import phase
    from aelab.evaluation.reconstruction import reconstruction_mse
    from aelab.evaluation.runs import load_run
    from aelab.models.likelihoods import DISCRETE, bits_per_dim
    from aelab.training import instantiate_all

    quiet_third_parties()
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
    test = datamodule.test_set
    metrics = code_metrics(cfg, model, datamodule, datamodule.source.name)
    settings: dict = {}
    metrics |= factor_metrics(cfg, model, datamodule, settings)
    metrics["test/recon_mse"] = reconstruction_mse(model, test.images)
    metrics |= active_unit_metrics(model, test.images, "test")
    if isinstance(model, ImportanceWeighted) and cfg.iw_samples > 0:
        with (
            torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []),
            phase(f"test/nll_iw K={cfg.iw_samples}", len(test)) as advance,
        ):
            torch.manual_seed(cfg.seed)
            metrics["test/nll_iw"] = importance_weighted_nll(
                model, test.images, cfg.iw_samples, advance=advance
            )
        if getattr(model, "likelihood", None) in DISCRETE:  # bits/dim from the same estimate
            dims = math.prod(test.images.shape[1:])
            metrics["test/bpd_iw"] = bits_per_dim(metrics["test/nll_iw"], dims)
    metrics |= sample_metrics(cfg, model, datamodule, datamodule.source.name, settings)
    log_latent_pictures(loggers, model, datamodule, step=0)
    trainer.test(model, datamodule=datamodule, verbose=False)  # in our table below, with the rest
    metrics |= {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics |= negative_elbo(metrics)

    for lg in loggers:
        lg.log_metrics(metrics, step=0)
        lg.finalize("success")
    name = run.config.model._target_.rsplit(".", 1)[-1]
    show_and_write(cfg, name, metrics, settings)
    return metrics


def check_inception_weights(cfg: DictConfig) -> None:
    """A given Inception weights file must exist: one line before anything is computed."""
    weights = cfg.sample_metrics.inception_weights
    if cfg.sample_metrics.inception and weights is not None and not Path(weights).is_file():
        raise ConfigError(
            f"sample_metrics.inception_weights={weights!r} is not a file; give the path of "
            "torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or null to download it"
        )


def code_metrics(cfg: DictConfig, model, datamodule, dataset: str) -> dict[str, float]:
    """k-NN and linear-probe accuracy of the latent codes, beside the same on pixels."""
    from aelab.evaluation.probes import (
        PROBE_EVALUATIONS,
        knn_accuracy,
        latent_codes,
        linear_probe_accuracy,
        pixel_baselines,
    )
    from aelab.evaluation.progress import phase

    if datamodule.classes is None:
        log.info("The data has no labels: no test/knn_acc, test/linear_acc (nor on pixels)")
        return {}
    train, test = datamodule.train_set, datamodule.test_set
    train_y, test_y = train.labels.cpu(), test.labels.cpu()
    with phase("latent codes", len(train) + len(test)) as advance:
        train_z = latent_codes(model, train.images, advance=advance)
        test_z = latent_codes(model, test.images, advance=advance)
    metrics = {}
    with phase("k-NN on codes", len(test), "test images") as advance:
        metrics["test/knn_acc"] = knn_accuracy(train_z, train_y, test_z, test_y, cfg.knn_k, advance)
    with phase("linear probe on codes", PROBE_EVALUATIONS, "L-BFGS evaluations at most") as advance:
        metrics["test/linear_acc"] = linear_probe_accuracy(
            train_z, train_y, test_z, test_y, advance=advance
        )
    return metrics | pixel_baselines(train, test, cfg.knn_k, cfg.paths.cache_dir, dataset)


def factor_metrics(cfg: DictConfig, model, datamodule, settings: dict) -> dict[str, float]:
    """MIG, DCI, SAP and the FactorVAE score of the codes on the datamodule's ground-truth set
    (none for data without factors), with `disentanglement.budget`'s points, which go into
    `settings`."""
    from dataclasses import asdict

    from aelab.evaluation.ground_truth import ground_truth, metric_budget, model_disentanglement

    data = ground_truth(datamodule)
    if data is None:
        return {}
    opts = cfg.disentanglement
    budget = metric_budget(opts.budget, opts.points, "disentanglement")
    settings["disentanglement_points"] = asdict(budget)
    report = model_disentanglement(model, data, budget, cfg.seed)
    return {} if report is None else {f"test/{k}": v for k, v in report.scores.items()}


def negative_elbo(metrics: dict[str, float]) -> dict[str, float]:
    """`test/neg_elbo`, -ELBO in nats per image whatever the weights the model trained with
    (beta-VAE's loss is recon + beta KL): test/recon + test/kl where the model logs both, else
    -test/elbo (IWAE, the two-layer VAE); nothing for a model without an ELBO."""
    if "test/recon" in metrics and "test/kl" in metrics:
        return {"test/neg_elbo": metrics["test/recon"] + metrics["test/kl"]}
    if "test/elbo" in metrics:
        return {"test/neg_elbo": -metrics["test/elbo"]}
    return {}


METRICS_CSV = "metrics.csv"  # beside METRICS_FILE (metrics.json) in an evaluation's folder


def show_and_write(cfg: DictConfig, model_name: str, metrics: dict, settings: dict) -> None:
    """The metrics as a table on screen and, with the settings that produced them, as
    `metrics.json` and `metrics.csv` in this evaluation's folder."""
    import pandas as pd
    from rich.console import Console

    from aelab.checkpoints import write_atomically
    from aelab.config import METRICS_FILE
    from aelab.sweeps.table import number, show

    folder = Path(cfg.paths.output_dir)
    settings = (
        {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "model": model_name}
        | {
            key: OmegaConf.to_container(cfg[key], resolve=True)
            if isinstance(cfg[key], DictConfig)
            else cfg[key]
            for key in ("protocol", "iw_samples", "knn_k", "seed", "sample_metrics")
        }
        | settings
    )
    record = {"settings": settings, "metrics": dict(sorted(metrics.items()))}
    folder.mkdir(parents=True, exist_ok=True)  # no logger (logger=none) made it
    write_atomically(folder / METRICS_FILE, json.dumps(record, indent=2).encode())
    rows = pd.DataFrame(
        {"metric": list(record["metrics"]), "value": list(record["metrics"].values())}
    )
    write_atomically(folder / METRICS_CSV, rows.to_csv(index=False).encode())
    show(rows.assign(value=rows["value"].map(number)), model_name, right=["value"])
    console = Console()
    # paths unwrapped (the terminal folds them where it must, never Rich mid-word)
    console.print(f"checkpoint: {settings['checkpoint']}", soft_wrap=True, highlight=False)
    console.print(
        f"written to: {folder / METRICS_FILE}, {METRICS_CSV}", soft_wrap=True, highlight=False
    )


def sample_metrics(
    cfg: DictConfig, model, datamodule, dataset: str, settings: dict
) -> dict[str, float]:
    """Sample quality of a model that generates, in its dataset's classifier features (and
    Inception's when its weights can be had); nothing for a model that cannot generate. What the
    numbers depend on beyond the config (the classifier's recipe) goes into `settings`."""
    from dataclasses import asdict

    from aelab.evaluation.classifier import Recipe, feature_classifier
    from aelab.evaluation.progress import phase
    from aelab.evaluation.samples import (
        can_generate,
        frechet_distance,
        generated_images,
        inception_fid,
        precision_recall,
    )

    opts = cfg.sample_metrics
    if opts.count <= 0 or not can_generate(model):
        return {}
    if datamodule.classes is None:
        log.info("The data has no labels: no feature classifier, so no sample metrics")
        return {}
    train, test = datamodule.train_set, datamodule.test_set
    recipe = Recipe(epochs=opts.classifier_epochs)
    settings["classifier_recipe"] = asdict(recipe)
    classifier, accuracy = feature_classifier(
        train, test, cfg.paths.cache_dir, dataset, recipe, cfg.accelerator
    )
    classifier.to(model.device)
    count = min(opts.count, len(test))
    real = test.images[:count]
    with phase("generating", count) as advance:
        fake = generated_images(
            model, train.images, count, cfg.seed, opts.mixture_components, advance=advance
        )
    with phase("precision, recall, Fréchet distance", 2 * count) as advance:
        real_features, fake_features = classifier.features(real), classifier.features(fake)
        precision, recall = precision_recall(real_features, fake_features, opts.nearest_k)
        metrics = {"test/classifier_acc": accuracy, "test/precision": precision}
        metrics["test/recall"] = recall
        metrics["test/fd_classifier"] = frechet_distance(classifier, real, fake)
        advance(2 * count)
    if opts.inception:
        fid = inception_fid(real, fake, opts.inception_weights, model.device)
        if fid is not None:
            metrics["test/fid"] = fid
    return metrics


EVAL_FILE = "eval.json"  # in the job's run folder: its metrics and the settings they came from


def evaluation_settings(cfg: DictConfig, checkpoint: Path) -> dict:
    """What an evaluation's metrics depend on: the checkpoint (its file as it is now) and every
    eval setting but where this evaluation writes."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(settings, dict)
    for key in ("ckpt_path", "paths", "logger", "hydra", "task_name"):
        settings.pop(key, None)
    stat = checkpoint.stat()
    return settings | {"checkpoint": str(checkpoint.resolve()), "mtime_ns": stat.st_mtime_ns}


def earlier_evaluation(cfg: DictConfig, checkpoint: Path) -> dict | None:
    """The metrics of an earlier evaluation of this checkpoint with the same settings, kept in
    its run folder; None when there is none (or the settings or the checkpoint changed)."""
    path = checkpoint.parent.parent / EVAL_FILE
    if not path.is_file():
        return None
    kept = json.loads(path.read_text())
    return kept["metrics"] if kept.get("settings") == evaluation_settings(cfg, checkpoint) else None


def keep_evaluation(cfg: DictConfig, checkpoint: Path, metrics: dict) -> None:
    from aelab.checkpoints import write_atomically

    kept = {"settings": evaluation_settings(cfg, checkpoint), "metrics": metrics}
    write_atomically(checkpoint.parent.parent / EVAL_FILE, json.dumps(kept, indent=2).encode())


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
        earlier = earlier_evaluation(cfg, job.checkpoint) if job.checkpoint else None
        if earlier is not None:
            record["metrics"] = earlier
            log.info(f"Job {job.job}: evaluated in an earlier run with the same settings")
        elif job.checkpoint is not None:
            own = Path(cfg.paths.output_dir) / str(job.job)
            one = {"ckpt_path": str(job.checkpoint), "paths": {"output_dir": str(own)}}
            try:
                metrics = evaluate(cast(DictConfig, OmegaConf.merge(cfg, one)))
                keep_evaluation(cfg, job.checkpoint, metrics)
                record["metrics"] = metrics
            except Exception as err:
                record |= {"status": "failed", "error": one_line(err)}
        record["seconds"] = round(time.perf_counter() - start, 1)
        records.append(record)
        gc.collect()  # the job's Trainer, model and data sit in reference cycles
    folder = folder or Path(cfg.paths.output_dir)
    foot = protocol_line(cfg)
    write_table(folder, records, "eval_results", metric_columns(records), foot)
    write_summary(folder, records, "eval_summary", foot)
    return records


def protocol_line(cfg: DictConfig) -> str:
    """How much the evaluation measured, for the foot of its tables."""
    return (
        f"Evaluated with protocol={cfg.protocol.name}: test/nll_iw with K={cfg.iw_samples} "
        f"importance samples, sample metrics on {cfg.sample_metrics.count} generated and as "
        f"many test images, a {cfg.sample_metrics.classifier_epochs}-epoch feature classifier, "
        f"the {cfg.disentanglement.budget} budget of points for the disentanglement metrics."
    )


def evaluate_any(cfg: DictConfig) -> None:
    """`evaluate_all` for a list of checkpoints or a run or sweep folder, else `evaluate`."""
    if isinstance(cfg.ckpt_path, ListConfig) or Path(cfg.ckpt_path).is_dir():
        evaluate_all(cfg)
    else:
        evaluate(cfg)


main = command("eval", evaluate_any)  # `aelab-eval`, `python -m aelab.eval`


if __name__ == "__main__":
    main()
