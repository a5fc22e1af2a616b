"""Multiruns: grids, Optuna, the joblib and submitit launchers, failing jobs, experiments."""

import csv
import gc
import json
import math
import weakref
from types import SimpleNamespace

import pytest
import yaml
from conftest import run_train, small_run_overrides
from omegaconf import OmegaConf

from aelab import sweeps
from aelab.config import CONFIG_DIR

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
        assert list((tmp_path / str(job) / "tensorboard").glob("events.*"))
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


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers(data_dir, tmp_path, launcher):
    _, rows = sweep(data_dir, tmp_path, f"hydra/launcher={launcher}", "model=ae,vae")
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("model=ae", "ok"),
        ("model=vae", "ok"),
    ]


def test_every_experiment_trains(data_dir, tmp_path):
    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    assert experiments == ["deep_ae_fashion", "simple_ae", "tanh_ae_3d", "vae_mnist"]
    _, rows = sweep(data_dir, tmp_path, f"experiment={','.join(experiments)}")
    assert [r["status"] for r in rows] == ["ok"] * 4


def test_experiments_match_the_tutorials(compose_cfg):
    simple = compose_cfg("experiment=simple_ae")
    assert (simple.model.latent_dim, simple.model.output_activation, simple.data.batch_size) == (
        128,
        "relu",
        64,
    )
    deep = compose_cfg("experiment=deep_ae_fashion")
    assert deep.data.dataset == "fashion" and deep.model.optimizer.weight_decay == 1e-5
    vae = compose_cfg("experiment=vae_mnist")
    assert vae.trainer.max_epochs == 15 and vae.data.batch_size == 128
    tanh = compose_cfg("experiment=tanh_ae_3d")
    assert (tanh.model.net.activation, tanh.model.optimizer.lr, tanh.model.latent_dim) == (
        "tanh",
        5e-3,
        3,
    )


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
    monkeypatch.setattr(sweeps.HydraConfig, "get", staticmethod(lambda: job))
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
        value = sweeps.run_sweep_job(OmegaConf.create({}), fit_and_test, lambda cfg, m: 1.0)
        assert built[0]() is None
    finally:
        gc.enable()
    assert value == (math.inf if fails else 1.0)
    assert json.loads((tmp_path / sweeps.RESULT_FILE).read_text())["status"] == (
        "failed" if fails else "ok"
    )


def test_results_print_at_least_four_significant_digits():
    from aelab.sweeps import number

    assert [number(v) for v in (0.0025, 0.00261234, 0.069, 105.56123, 3.0)] == [
        "0.002500",
        "0.002612",
        "0.06900",
        "105.5612",
        "3",
    ]
