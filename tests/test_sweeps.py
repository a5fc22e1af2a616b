"""Multiruns: grids, Optuna, the process and submitit launchers, failing jobs, experiments."""

import csv
import gc
import json
import math
import os
import re
import shutil
import signal
import statistics
import time
import weakref
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import output_of, run_python, run_train, small_run_overrides, start_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aelab.config import CONFIG_DIR
from aelab.sweeps import jobs

pytestmark = pytest.mark.slow
QUICK = ["debug=fast", "callbacks.progress_bar=null"]


def sweep(data_dir, sweep_dir, *args):
    result = run_train(
        "-m", *args, *small_run_overrides(data_dir), *QUICK, f"hydra.sweep.dir={sweep_dir}"
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert (sweep_dir / "results.md").read_text().count("\n") == len(rows) + 2
    return result, rows


def test_grid_runs_every_combination_in_its_own_folder(data_dir, tmp_path):
    result, rows = sweep(data_dir, tmp_path, "model=ae,vae", "model.latent_dim=2,8")
    assert [r["overrides"] for r in rows] == [
        "model=ae model.latent_dim=2",
        "model=ae model.latent_dim=8",
        "model=vae model.latent_dim=2",
        "model=vae model.latent_dim=8",
    ]
    assert all(r["status"] == "ok" and float(r["val/loss"]) > 0 for r in rows)
    assert rows[2]["val/kl"] and not rows[0]["val/kl"]
    # the validation metrics of each job's tested (best) checkpoint, from the epoch named
    assert all(r["best_epoch"] in {"0", "1"} for r in rows)
    assert all(len(r["val/loss"].replace(".", "").lstrip("0")) >= 4 for r in rows), rows
    for job in range(4):
        assert list((tmp_path / str(job)).glob("*/events.*"))
    assert "4 jobs in" in result.stdout


def test_a_diverging_job_fails_alone(data_dir, tmp_path):
    _, rows = sweep(data_dir, tmp_path, "model=vae", "model.optimizer.lr=1e-3,1e4")
    ok, failed = rows
    assert ok["status"] == "ok" and float(ok["test/loss"]) > 0
    assert failed["status"] == "failed" and failed["error"].startswith("training diverged:")
    assert failed["overrides"] == "model.optimizer.lr=10000.0"


def test_optuna_search(data_dir, tmp_path):
    result, rows = sweep(
        data_dir, tmp_path, "hparams_search=vae_optuna", "hydra.sweeper.n_trials=3"
    )
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    # data.batch_size is fixed by the command line here, so Optuna does not search it
    assert set(best["best_params"]) == {
        "model.optimizer.lr",
        "model.latent_dim",
        "model.net.hidden_dims.0",
    }
    assert best["best_value"] == pytest.approx(min(float(r["val/loss"]) for r in rows), rel=1e-5)
    assert "Best parameters" in result.stdout + result.stderr


def test_optuna_sees_failed_trials_as_worst(data_dir, tmp_path):
    _, rows = sweep(
        data_dir,
        tmp_path,
        "hparams_search=vae_optuna",
        "hydra.sweeper.n_trials=2",
        "model.optimizer.lr=1e4",  # fixed here: every trial diverges
    )
    assert [r["status"] for r in rows] == ["failed", "failed"]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == float("inf")


@pytest.mark.parametrize("launcher", ["processes", "joblib", "submitit_local"])
def test_launchers(data_dir, tmp_path, launcher):
    result, rows = sweep(data_dir, tmp_path, f"hydra/launcher={launcher}", "model=ae,vae")
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("model=ae", "ok"),
        ("model=vae", "ok"),
    ]
    # joblib is the old name of aelab's process launcher: one line says which launcher it gets
    said = "hydra/launcher=joblib: aelab's process launcher (hydra/launcher=processes)"
    assert (said in result.stdout + result.stderr) == (launcher == "joblib")
    if launcher != "submitit_local":  # the CPUs divided among the jobs at once
        threads = max(1, (os.cpu_count() or 1) // min(2, os.cpu_count() or 1))
        assert f"Launching 2 jobs, {os.cpu_count()} at a time, {threads} thread(s) each" in (
            result.stdout + result.stderr
        )


def test_an_interrupted_grid_reruns_only_its_unfinished_jobs(data_dir, tmp_path):
    args = ["model=ae,vae", "model.latent_dim=2,8"]
    first = start_train(
        "-m", *args, *small_run_overrides(data_dir), *QUICK, f"hydra.sweep.dir={tmp_path}"
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "2" / ".hydra").is_dir():  # jobs 0 and 1 are done, 2 has started
        assert first.poll() is None and time.monotonic() < deadline, output_of(first)[-3000:]
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = {"0": (tmp_path / "0" / "result.json").read_text()}
    assert not (tmp_path / "2" / "result.json").exists()
    # as if job 1 had been killed after its last checkpoint, before recording its result
    (tmp_path / "1" / "result.json").unlink()
    _, rows = sweep(data_dir, tmp_path, *args)
    assert [(r["job"], r["status"]) for r in rows] == [(str(j), "ok") for j in range(4)]
    # the finished job was read back, not trained again; job 1 went on from its checkpoint
    assert {job: (tmp_path / job / "result.json").read_text() for job in finished} == finished
    assert "was interrupted: resuming from" in (tmp_path / "1" / "train.log").read_text()
    assert (
        "job 0 finished in an earlier run of this sweep (ok)"
        in (tmp_path / "0" / "train.log").read_text()
    )


KILLER = """
import os, signal
import lightning as L


class KillSelf(L.Callback):
    \"\"\"Stands for the OOM killer: SIGKILL this job's process when training starts.\"\"\"

    def __init__(self, latent_dim: int, kill_at: int) -> None:
        self.kill = latent_dim == kill_at

    def on_train_start(self, trainer, pl_module) -> None:
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_job_of_the_process_launcher_fails_alone(data_dir, tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run_train(
        "-m",
        "hydra/launcher=processes",
        "hydra.launcher.n_jobs=2",
        "model.latent_dim=2,8,16",
        "+callbacks.killer._target_=killer.KillSelf",
        "+callbacks.killer.latent_dim=${model.latent_dim}",
        "+callbacks.killer.kill_at=8",
        *small_run_overrides(data_dir),
        *QUICK,
        f"hydra.sweep.dir={sweep_dir}",
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["overrides"].split()[0], r["status"]) for r in rows] == [
        ("model.latent_dim=2", "ok"),
        ("model.latent_dim=8", "failed"),
        ("model.latent_dim=16", "ok"),
    ]
    assert rows[1]["error"].startswith("killed by SIGKILL")


def test_every_experiment_trains(data_dir, tmp_path):
    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    assert experiments == [
        "deep_ae_fashion",
        "iwae_vae_mnist",
        "simple_ae",
        "tanh_ae_3d",
        "vae_mnist",
    ]
    _, rows = sweep(data_dir, tmp_path, f"experiment={','.join(experiments)}")
    assert [r["status"] for r in rows] == ["ok"] * 5


def test_experiments_match_the_tutorials(compose_cfg):
    simple = compose_cfg("experiment=simple_ae")
    assert (simple.model.latent_dim, simple.model.output_activation, simple.data.batch_size) == (
        128,
        "relu",
        64,
    )
    deep = compose_cfg("experiment=deep_ae_fashion")
    assert deep.data.source.name == "fashion" and deep.model.optimizer.weight_decay == 1e-5
    vae = compose_cfg("experiment=vae_mnist")
    assert vae.trainer.max_epochs == 15 and vae.data.batch_size == 128
    tanh = compose_cfg("experiment=tanh_ae_3d")
    assert (tanh.model.net.activation, tanh.model.optimizer.lr, tanh.model.latent_dim) == (
        "tanh",
        5e-3,
        3,
    )


def test_the_iwae_experiment_is_burda_et_al_s_vae(compose_cfg):
    cfg = compose_cfg("experiment=iwae_vae_mnist")
    model = cfg.model
    assert model._target_ == "aelab.models.VAE" and model.likelihood == "bernoulli"
    assert (model.net._target_, model.net.hidden_dims, model.net.activation) == (
        "aelab.nets.MLP",
        [200, 200],
        "tanh",
    )
    assert model.latent_dim == 50 and model.optimizer._target_ == "torch.optim.Adam"
    assert (model.optimizer.lr, list(model.optimizer.betas), model.optimizer.eps) == (
        1e-3,
        [0.9, 0.999],
        1e-4,
    )
    assert model.scheduler._target_ == "aelab.schedulers.StagedDecay"
    assert (model.scheduler.growth, model.scheduler.stages_per_decade) == (3, 7)
    assert (cfg.data.source.name, cfg.data.batch_size, cfg.data.binarize) == (
        "mnist",
        20,
        "dynamic",
    )
    vae = instantiate(model, image_shape=[1, 28, 28], _convert_="all")
    linears = [m for m in vae.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 200),
        (200, 200),
        (50, 200),
        (200, 200),
        (200, 784),
        (200, 50),  # mu
        (200, 50),  # log sigma^2
    ]
    assert {type(m) for m in vae.net.modules()} >= {torch.nn.Tanh}
    assert not {torch.nn.ReLU} & {type(m) for m in vae.net.modules()}


def test_slurm_launcher_config(compose_cfg):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.timeout_min, launcher.partition) == (1, 240, None)


@pytest.mark.parametrize("fails", [False, True])
def test_a_finished_job_leaves_nothing_for_the_next(tmp_path, monkeypatch, fails):
    """Jobs of a multirun share a process: what a job built in reference cycles (a Trainer and
    its module point at each other) is freed when the job ends, also when it failed."""
    job = SimpleNamespace(
        job=SimpleNamespace(num=0),
        overrides=SimpleNamespace(task=["model=vae"]),
        runtime=SimpleNamespace(output_dir=str(tmp_path)),
    )
    monkeypatch.setattr(jobs.HydraConfig, "get", staticmethod(lambda: job))
    built = []

    class Held:  # stands for a Trainer and its LightningModule
        pass

    def fit_and_test(cfg):
        trainer, module = Held(), Held()
        trainer.module, module.trainer = module, trainer
        built.append(weakref.ref(trainer))
        if fails:
            raise RuntimeError("diverged")
        return {"val/loss": 1.0}

    gc.disable()  # only the job's own collection may free the cycle
    try:
        value = jobs.run_sweep_job(OmegaConf.create({}), fit_and_test, lambda cfg, m: 1.0)
        assert built[0]() is None
    finally:
        gc.enable()
    assert value == (math.inf if fails else 1.0)
    assert json.loads((tmp_path / jobs.RESULT_FILE).read_text())["status"] == (
        "failed" if fails else "ok"
    )


def test_results_print_at_least_four_significant_digits():
    from aelab.sweeps.table import number

    assert [number(v) for v in (0.0025, 0.00261234, 0.069, 105.56123, 3.0)] == [
        "0.002500",
        "0.002612",
        "0.06900",
        "105.5612",
        "3",
    ]


FAILER = """
import lightning as L


class FailOn(L.Callback):
    \"\"\"Makes the one job whose `job` equals `fail` raise when training starts.\"\"\"

    def __init__(self, job: str, fail: str) -> None:
        self.fail = job == fail

    def on_train_start(self, trainer, pl_module) -> None:
        if self.fail:
            raise RuntimeError("this seed fails")
"""


@pytest.fixture(scope="module")
def seeds_sweep(data_dir, tmp_path_factory):
    """model=ae,vae seed=1,2,3 on binarized images, where the VAE's seed 3 fails."""
    root = tmp_path_factory.mktemp("seeds")
    (root / "failer.py").write_text(FAILER)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run_train(
        "-m",
        "model=ae,vae",
        "seed=1,2,3",
        "+callbacks.failer._target_=failer.FailOn",
        "+callbacks.failer.job=${model._target_}-${seed}",
        "+callbacks.failer.fail=aelab.models.VAE-3",
        "data.binarize=dynamic",
        "trainer.limit_test_batches=1.0",  # the whole test set, as aelab.eval tests on
        *small_run_overrides(data_dir),
        *QUICK,
        f"hydra.sweep.dir={root / 'sweep'}",
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return root / "sweep", result


def test_a_multirun_prints_its_config_once_then_a_line_per_job(seeds_sweep):
    _, result = seeds_sweep
    output = result.stdout + result.stderr
    assert output.count("optimized_metric") == 1  # a top-level key of the config tree
    for job in range(1, 6):
        assert re.search(rf"Job {job}: model=(ae|vae) seed=[123]", output), job
    assert "LeafSpec" not in output and "Trainer already configured" not in output


def test_a_sweep_over_seeds_is_summarised_with_error_bars(seeds_sweep):
    sweep_dir, result = seeds_sweep
    records = [jobs.read_record(sweep_dir / str(job)) for job in range(6)]
    assert [r["status"] for r in records] == ["ok"] * 5 + ["failed"]
    with open(sweep_dir / "summary.csv") as f:
        ae, vae = csv.DictReader(f)
    assert (ae["overrides"], ae["n"], ae["failed"]) == ("model=ae", "3", "0")
    assert (vae["overrides"], vae["n"], vae["failed"]) == ("model=vae", "2", "1")
    for row, model, seeds in ((ae, "model=ae", 3), (vae, "model=vae", 2)):
        losses = [
            r["metrics"]["val/loss"]
            for r in records
            if r["overrides"].startswith(model) and r["status"] == "ok"
        ]
        assert len(losses) == seeds
        assert float(row["val/loss_mean"]) == pytest.approx(statistics.mean(losses), rel=1e-9)
        assert float(row["val/loss_std"]) == pytest.approx(statistics.stdev(losses), rel=1e-9)
        assert float(row["test/loss_std"]) > 0
    assert vae["val/kl_mean"] and not ae["val/kl_mean"]
    markdown = (sweep_dir / "summary.md").read_text().splitlines()
    assert len(markdown) == 4 and " ± " in markdown[2] and "model=vae" in markdown[3]
    assert "grouped by their overrides but seed" in result.stdout


def test_one_job_has_a_mean_and_no_spread():
    from aelab.sweeps.summary import summarize

    records = [
        {"overrides": f"model={m} seed={s}", "status": "ok", "metrics": {"val/loss": v}}
        for m, s, v in (("ae", 1, 1.0), ("ae", 2, 3.0), ("vae", 1, 5.0))
    ]
    records.append({"overrides": "model=vae seed=2", "status": "pruned", "metrics": {}})
    summary = summarize(records).set_index("overrides")
    assert summary.loc["model=ae", "val/loss_std"] == pytest.approx(math.sqrt(2))  # ddof=1
    assert summary.loc["model=vae", ["n", "pruned", "val/loss_mean"]].tolist() == [1, 1, 5.0]
    assert math.isnan(summary.loc["model=vae", "val/loss_std"])
    every_job_failed = [
        {"overrides": f"seed={s}", "status": "failed", "metrics": {}} for s in (1, 2)
    ]
    assert summarize(every_job_failed).to_dict("records") == [
        {"overrides": "", "n": 0, "failed": 2, "pruned": 0}
    ]


def test_eval_of_a_sweep_summarises_every_job_s_tested_checkpoint(seeds_sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(seeds_sweep[0], sweep_dir)
    for lost in (sweep_dir / "0" / "checkpoints").glob("epoch_*.ckpt"):
        lost.unlink()  # as if job 0's tested checkpoint had been lost
    result = run_python(
        "-m",
        "aelab.eval",
        f"ckpt_path={sweep_dir}",
        "iw_samples=20",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(sweep_dir / "eval_results.csv") as f:
        evaluated = list(csv.DictReader(f))
    with open(sweep_dir / "results.csv") as f:
        trained = list(csv.DictReader(f))
    assert [r["status"] for r in evaluated] == ["failed", "ok", "ok", "ok", "ok", "failed"]
    assert evaluated[0]["error"].endswith(
        "checkpoints: no checkpoint of epoch 0, the one it tested"
    )
    assert evaluated[5]["error"] == "training failed: RuntimeError: this seed fails"
    for job in (1, 2, 3, 4):
        # the tested checkpoint, on the same binary test set as in training
        assert evaluated[job]["test/loss"] == trained[job]["test/loss"], job
    with open(sweep_dir / "eval_summary.csv") as f:
        ae, vae = csv.DictReader(f)
    assert [(g["overrides"], g["n"], g["failed"]) for g in (ae, vae)] == [
        ("model=ae", "2", "1"),
        ("model=vae", "2", "1"),
    ]
    assert float(vae["test/nll_iw_std"]) > 0 and not ae["test/nll_iw_mean"]
    assert 0 <= float(ae["test/knn_acc_mean"]) <= 1
    assert (tmp_path / "eval" / "4" / "tensorboard").is_dir()
    assert "grouped by their overrides but seed" in result.stdout
    for table in ("eval_results.md", "eval_summary.md"):  # what they measured, at their foot
        foot = (sweep_dir / table).read_text().strip().splitlines()[-1]
        assert foot.startswith("Evaluated with protocol=cpu: test/nll_iw with K=20 "), foot
    assert (tmp_path / "eval" / "4" / "metrics.json").is_file()
    # a list of checkpoints: grouped by their runs' overrides, tables in the evaluation's folder
    from aelab.evaluation.runs import jobs_to_evaluate

    tested = [next((sweep_dir / j / "checkpoints").glob("epoch_*")) for j in ("1", "3")]
    jobs, folder = jobs_to_evaluate(OmegaConf.create({"c": [str(p) for p in tested]}).c)
    assert folder is None and [j.checkpoint for j in jobs] == tested
    assert [j.overrides.split()[:2] for j in jobs] == [
        ["model=ae", "seed=2"],
        ["model=vae", "seed=1"],
    ]
