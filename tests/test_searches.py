"""Optuna searches that last: a study in a file that survives a killed search, pruning, two
worker processes filling one study, and optuna-dashboard reading it."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import free_port, output_of, run_train, small_run_overrides, start_train

from aelab.errors import ConfigError

STUDY = "vae_optuna"


def search_args(data_dir: Path, sweep_dir: Path, *args: str) -> list[str]:
    """A tiny search: two fixed sizes, the learning rate searched, no pruning unless asked."""
    return [
        "hparams_search=vae_optuna",
        *small_run_overrides(data_dir),
        "debug=fast",
        "callbacks.progress_bar=null",
        "model.latent_dim=8",
        "model.net.hidden_dims.0=64",
        f"hydra.sweep.dir={sweep_dir}",
        *args,
    ]


def load_study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{sweep_dir / 'study.db'}")


def states(study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in study.trials)


def table(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def wait_for(condition, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, output_of(process)[-3000:]
        assert time.monotonic() < deadline, output_of(process)[-3000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def resumed_search(data_dir, tmp_path_factory):
    """A search of 4 trials killed (SIGKILL, the whole process group) during its third trial,
    then the same command run again."""
    sweep_dir = tmp_path_factory.mktemp("search")
    args = search_args(data_dir, sweep_dir, "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=none")
    first = start_train(*args)
    wait_for(lambda: (sweep_dir / "2" / ".hydra").is_dir(), first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (sweep_dir / "2" / "result.json").exists()
    second = run_train(*args)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    return sweep_dir, second


@pytest.mark.slow
def test_a_killed_search_resumes_its_study_to_n_trials(resumed_search):
    sweep_dir, second = resumed_search
    study = load_study(sweep_dir)
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}
    (lost,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert lost.number == 2
    rows = table(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "ok"),
        ("1", "ok"),
        ("2", "failed"),
        ("3", "ok"),
        ("4", "ok"),
    ]
    assert "stopped mid-trial" in rows[2]["error"]
    # the first two trials were kept, not run again
    assert "2 of 4 trials done or running" in second.stdout + second.stderr
    best = (sweep_dir / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in best
    # each trial has its own values: no summary of groups of one
    assert not (sweep_dir / "summary.csv").exists() and "no summary over seeds" in second.stdout


def test_a_searched_float_prints_short_in_the_console_table_and_whole_in_the_files():
    from aelab.sweeps.table import short_override

    assert (
        short_override("model.optimizer.lr=0.0073498792462323385") == "model.optimizer.lr=0.00735"
    )
    assert short_override("model=vae") == "model=vae" and short_override("seed=3") == "seed=3"


@pytest.mark.slow
def test_a_study_refuses_other_fixed_overrides_and_takes_another_data_folder(
    resumed_search, data_dir
):
    sweep_dir, _ = resumed_search
    before = len(load_study(sweep_dir).trials)
    other = search_args(data_dir, sweep_dir, "hydra.sweeper.n_trials=6", "model.latent_dim=4")
    refused = run_train(*other)
    assert refused.returncode == 1
    (line,) = [ln for ln in refused.stderr.splitlines() if "fixed overrides" in ln]
    assert "new: ['model.latent_dim=4']" in line and "gone: ['model.latent_dim=8']" in line
    assert "hydra.sweeper.study_name=NEW_NAME" in line and "Traceback" not in refused.stderr
    assert len(load_study(sweep_dir).trials) == before  # not a trial asked
    # where the data is, how it loads: not the problem
    moved = search_args(data_dir, sweep_dir, "hydra.sweeper.n_trials=4", "data.num_workers=0")
    assert run_train(*moved).returncode == 0
    assert len(load_study(sweep_dir).trials) == before


def test_a_study_without_a_record_of_its_overrides_goes_on_and_records_them(tmp_path, caplog):
    from aelab.sweeps.optuna import FIXED_ATTR, check_same_problem

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'old.db'}", study_name="old")
    study.enqueue_trial({})
    study.tell(study.ask(), 1.0)  # made by an aelab that kept no record
    with caplog.at_level("INFO"):
        check_same_problem(study, ["model=vae", "paths.data_dir=/a"])
    assert "predates aelab's record of its fixed overrides" in caplog.text
    assert study.user_attrs[FIXED_ATTR] == ["model=vae"]
    check_same_problem(study, ["paths.data_dir=/b", "model=vae"])  # another folder: the same
    with pytest.raises(ConfigError, match=r"new: \['model=iwae'\]; gone: \['model=vae'\]"):
        check_same_problem(study, ["model=iwae"])


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study(resumed_search):
    sweep_dir, _ = resumed_search
    port = free_port()
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    study_db = f"sqlite:///{sweep_dir / 'study.db'}"
    command = [dashboard, study_db, "--quiet", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.load(urllib.request.urlopen(url, timeout=5))["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.3)
        (study,) = studies
        assert study["study_name"] == STUDY
        detail = json.load(urllib.request.urlopen(f"{url}/{study['study_id']}", timeout=30))
        trials = {t["number"]: t["state"] for t in detail["trials"]}
        assert trials == {0: "Complete", 1: "Complete", 2: "Fail", 3: "Complete", 4: "Complete"}
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_a_poor_region_is_pruned_not_failed(data_dir, tmp_path):
    """lr=1e-6 learns almost nothing in two epochs: the median pruner stops those trials after
    their first epoch; they are PRUNED in the study and the table, and run no test."""
    result = run_train(
        *search_args(
            data_dir,
            tmp_path,
            "hydra.sweeper.n_trials=4",
            "model.optimizer.lr=choice(1e-2,1e-6)",
            "trainer.max_epochs=2",
            "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=0",
            "hydra.sweeper.sampler.seed=0",  # draws 1e-6, 1e-2, 1e-6, 1e-6
        )
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    study = load_study(tmp_path)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["model.optimizer.lr"] == 1e-6 for t in pruned)
    assert all(list(t.intermediate_values) == [0] for t in pruned)  # stopped after epoch 0
    assert states(study)["COMPLETE"] + len(pruned) == 4 and "FAIL" not in states(study)
    rows = {int(r["job"]): r for r in table(tmp_path)}
    for trial in pruned:
        assert rows[trial.number]["status"] == "pruned"
        assert rows[trial.number]["test/loss"] == ""
        assert "pruned at epoch 0" in rows[trial.number]["error"]


@pytest.mark.slow
def test_two_workers_fill_one_study_to_exactly_n_trials(data_dir, tmp_path):
    args = search_args(data_dir, tmp_path, "hydra.sweeper.n_trials=5", "hydra/sweeper/pruner=none")
    workers = [start_train(*args), start_train(*args)]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, output_of(worker)[-3000:]
    study = load_study(tmp_path)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 5
    # a trial beyond n_trials (both workers asking at the last instant) is marked, never lost
    assert all("aelab:surplus" in t.user_attrs for t in study.trials if t.state.name != "COMPLETE")
    assert len({t.user_attrs["aelab:worker"]["pid"] for t in finished}) == 2
    records = [json.loads((tmp_path / str(t.number) / "result.json").read_text()) for t in finished]
    assert all(r["status"] == "ok" for r in records)


def test_the_search_space_syntax():
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    from aelab.sweeps.optuna import search_space

    params = {
        "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
        "model.latent_dim": "choice(8, 16)",
        "data.batch_size": "choice(64, 128)",
    }
    fixed, space = search_space(
        params, ["data.batch_size=32", "model.beta=interval(0.5, 4.0)", "+x=range(1, 9, step=2)"]
    )
    assert fixed == ["data.batch_size=32"]  # a plain value fixes a searched key
    assert space == {
        "model.optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.latent_dim": CategoricalDistribution([8, 16]),
        "model.beta": FloatDistribution(0.5, 4.0),
        "+x": IntDistribution(1, 7, step=2),  # a new key, appended in each trial
    }


def test_a_search_of_no_dimension_or_a_joblib_option_that_does_not_apply_is_one_line():
    from aelab.errors import ConfigError
    from aelab.sweeps.launcher import ProcessLauncher
    from aelab.sweeps.optuna import search_space

    with pytest.raises(ConfigError, match=r"hydra.sweeper.params is empty"):
        search_space({"a": "choice(1, 2)"}, ["a=1"])
    with pytest.raises(ConfigError, match=r"params.a='3' is not a search dimension"):
        search_space({"a": "3"}, [])
    ProcessLauncher(n_jobs=2, backend=None)  # hydra-joblib-launcher's schema at its defaults
    with pytest.raises(ConfigError, match=r"hydra.launcher.backend='threading' does not apply"):
        ProcessLauncher(n_jobs=2, backend="threading")


def test_jobs_side_by_side_divide_the_cpus_among_them(monkeypatch):
    import torch

    from aelab.errors import ConfigError
    from aelab.sweeps.launcher import ProcessLauncher, job_threads, limit_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [job_threads("auto", n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert job_threads(3, 2) == 3 and job_threads(None, 2) is None
    for wrong in (0, "all", True):
        with pytest.raises(ConfigError, match=r"hydra.launcher.threads_per_job=.*auto, a posit"):
            ProcessLauncher(n_jobs=2, threads_per_job=wrong)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    assert job_threads("auto", 2) is None and job_threads(2, 2) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_sweep_folder_of_another_sweep_is_refused(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from aelab.errors import ConfigError
    from aelab.sweeps import jobs

    (tmp_path / "0").mkdir()
    there = "model=ae paths.data_dir=/data seed=1"
    jobs.write_record(tmp_path / "0", {"job": 0, "overrides": there, "status": "ok"})
    job = SimpleNamespace(
        job=SimpleNamespace(num=0),
        overrides=SimpleNamespace(task=["model=ae", "seed=1", "paths.data_dir='../data'", "+x=1"]),
        runtime=SimpleNamespace(output_dir=str(tmp_path / "0")),
    )
    monkeypatch.setattr(jobs.HydraConfig, "get", staticmethod(lambda: job))
    with pytest.raises(ConfigError) as refused:
        jobs.run_sweep_job(OmegaConf.create({}), lambda cfg: {}, lambda cfg, m: None)
    assert str(refused.value).endswith(
        f"holds another sweep: its job 0 ran {there!r}, this one differs in paths.data_dir "
        "('/data' there, '../data' here); +x ('unset' there, '1' here); give a new "
        "hydra.sweep.dir, or that sweep's values to resume it"
    )


def _open_study(folder: str, results) -> None:
    from aelab.sweeps.optuna import open_storage

    try:
        storage = open_storage(None, Path(folder))
        optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True)
        results.put("ok")
    except Exception as err:
        results.put(repr(err))


def test_workers_creating_one_new_study_file_at_once_all_open_it(tmp_path):
    """Three processes forked at once onto a study file that does not exist yet: SQLAlchemy's
    table creation races (alembic's version row), and a worker that lost retries."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    outcomes = []
    for attempt in range(10):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        results = context.Queue()
        workers = [context.Process(target=_open_study, args=(str(folder), results)) for _ in "abc"]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        outcomes += [results.get(timeout=5) for _ in workers]
    assert outcomes == ["ok"] * 30, [o for o in outcomes if o != "ok"]
