"""TensorBoard as a researcher reads it: run names, the HParams view, custom scalars, the
config and the network, read back from a real TensorBoard server over HTTP."""

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, read_events, run_train, small_run_overrides
from omegaconf import OmegaConf

from aelab.config import MAX_NAME
from aelab.loggers import hparams as hp
from aelab.loggers.tensorboard import trial_id

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def test_a_run_is_named_by_its_swept_overrides_and_no_folder():
    overrides = ["model=vae", "model.latent_dim=8", "paths.data_dir=/data", "seed=3"]
    assert hp.name_of(overrides, ["model.latent_dim", "seed"]) == "latent_dim=8,seed=3"
    assert hp.name_of(overrides, []) == hp.SINGLE_RUN
    assert hp.is_path("paths.data_dir") and hp.is_path("data.source.path")
    assert hp.is_path("ckpt_path") and hp.is_path("init_from")
    assert not hp.is_path("model.latent_dim")


def test_names_stay_short_and_safe_as_folder_names():
    optuna = ["model.optimizer.lr=0.00034567891234", "model.net.hidden_dims.0=400"]
    swept = ["model.optimizer.lr", "model.net.hidden_dims.0"]
    assert hp.name_of(optuna, swept) == "lr=0.0003457,hidden_dims.0=400"
    # a tail two keys share is lengthened until it is unique
    assert hp.name_of(["model.beta=2", "data.beta=1"], ["model.beta", "data.beta"]) == (
        "model.beta=2,data.beta=1"
    )
    lists = ["model.net.hidden_dims=[64,32]", "tags=[a/b]"]
    assert hp.name_of(lists, ["model.net.hidden_dims", "tags"]) == "hidden_dims=64,32,tags=a_b"
    keys = [f"model.option_number_{i}" for i in range(8)]
    long = hp.name_of([f"{key}=1" for key in keys], keys)
    other = hp.name_of([f"{key}=2" for key in keys], keys)
    assert len(long) == MAX_NAME == len(other) and long != other
    assert long.startswith("option_number_0=1,option_number_1=1")
    assert long == hp.name_of([f"{key}=1" for key in keys], keys)  # the same every time


def test_a_trial_id_starts_with_what_tells_runs_apart():
    """HParams shows the first characters of a trial ID: the overrides, then the time."""
    runs = Path("logs/train/runs")
    single = runs / "2026-12-06_16-52-12_model-vae+data-fashion" / hp.SINGLE_RUN
    assert trial_id(single) == "model-vae+data-fashion 2026-12-06_16-52-12"
    assert trial_id(runs / "2026-12-06_16-52-12" / hp.SINGLE_RUN) == "2026-12-06_16-52-12"
    job = Path("logs/train/multiruns/2026-12-06_11-49-55/0")
    assert trial_id(job / "latent_dim=2") == "latent_dim=2 2026-12-06_11-49-55/0"
    assert trial_id(job / hp.SINGLE_RUN) == "2026-12-06_11-49-55/0"  # a sweep varying nothing
    assert trial_id(Path("/tmp/my_run") / hp.SINGLE_RUN) == "my_run"  # hydra.run.dir=/tmp/my_run


def test_an_optuna_search_names_its_runs_by_the_searched_keys(tmp_path, monkeypatch):
    """An Optuna search's varied keys are `hydra.sweeper.params`, less those its command line
    (the sweep's multirun.yaml) fixes."""
    job = OmegaConf.create(
        {
            "sweep": {"dir": str(tmp_path)},
            "sweeper": {
                "params": {
                    "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
                    "model.latent_dim": "choice(8, 16)",
                }
            },
            "overrides": {"task": ["model.optimizer.lr=0.0012", "model.latent_dim=16", "seed=1"]},
        }
    )
    monkeypatch.setattr(hp, "_hydra", lambda: job)
    assert hp.swept_keys() == ["model.optimizer.lr", "model.latent_dim"]
    assert hp.run_name() == "lr=0.0012,latent_dim=16"
    command_line = {"hydra": {"overrides": {"task": ["hparams_search=x", "model.latent_dim=16"]}}}
    OmegaConf.save(OmegaConf.create(command_line), tmp_path / "multirun.yaml")
    assert hp.swept_keys() == ["model.optimizer.lr"]


def test_hparams_are_what_runs_are_compared_by_swept_first(compose_cfg, monkeypatch):
    monkeypatch.setattr(hp, "swept_keys", lambda: ["model.net.hidden_dims.0"])
    values = hp.compared_hparams(compose_cfg("model=vae", "scheduler=cosine"), seed=7)
    assert (
        next(iter(values)) == "model.net.hidden_dims.0" and values["model.net.hidden_dims.0"] == 400
    )
    assert values["optimizer"] == "Adam" and values["scheduler"] == "CosineAnnealingLR"
    assert values["model.latent_dim"] == 20 and values["seed"] == 7
    # the initialisation changes every number: runs that differ in it are told apart
    assert values["model.init"] == "glorot" and values["model.output_bias"] == "data"
    assert values["model.net.batch_norm"] is False
    assert "model.net.hidden_dims" not in values  # one column per searched key, not two
    assert values["data.source.name"] == "mnist" and values["data.batch_size"] == 128
    assert not [name for name in values if "_target_" in name or "dir" in name]
    assert "data.chunk_size" not in values and "tags" not in values  # loading internals; none


@pytest.mark.parametrize("compiled", [False, True])
def test_the_network_is_traced_unless_compiled(compose_cfg, tmp_path, compiled):
    import lightning as L
    from hydra.utils import instantiate

    from aelab.loggers import TensorBoardLogger

    cfg = compose_cfg("model=conv_ae", f"model.compile={compiled}", output_dir=tmp_path)
    model = instantiate(cfg.model, image_shape=[1, 28, 28], _convert_="all")
    model.trainer = L.Trainer(accelerator="cpu", logger=False)  # as in training
    logger = TensorBoardLogger(str(tmp_path))
    logger.log_graph(model)
    logger.finalize("success")
    events = read_events(tmp_path / hp.SINGLE_RUN)
    assert events.Tags()["graph"] is not compiled
    assert model.training  # traced in eval mode, handed back as it was


class TensorBoard:
    """A TensorBoard server over `logdir`, asked over HTTP as its web page asks."""

    def __init__(self, logdir, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        command = ["tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def get(self, route: str, body: dict | None = None, **query) -> dict | str:
        url = f"{self.url}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        with self.opener.open(urllib.request.Request(url, data, headers), timeout=10) as r:
            text = r.read().decode()
        return json.loads(text) if r.headers.get_content_type() == "application/json" else text

    def wait_for(self, route: str, ready, timeout: float = 90.0):
        """The answer of `route` once `ready(answer)` holds (the server loads in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self.get(route)
                if ready(answer):
                    return answer
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"{route} not ready in {timeout} s"
            time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def sweep_in_tensorboard(data_dir, tmp_path):
    """A 3-job multirun over model.latent_dim (with a scheduler) and TensorBoard serving it."""
    result = run_train(
        "-m",
        "model=vae",
        "model.latent_dim=2,4,8",
        "scheduler=cosine",
        "debug=fast",
        *small_run_overrides(data_dir),
        "callbacks.progress_bar=null",
        "~callbacks.latent_pictures",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    server = TensorBoard(tmp_path, free_port())
    try:
        yield tmp_path, server
    finally:
        server.close()


@pytest.mark.slow
def test_tensorboard_shows_a_sweep_at_a_glance(sweep_in_tensorboard):
    sweep_dir, tb = sweep_in_tensorboard
    names = ["0/latent_dim=2", "1/latent_dim=4", "2/latent_dim=8"]
    runs = tb.wait_for("/data/runs", lambda runs: len(runs) == 3)
    assert sorted(runs) == names  # one run per job: no twin holding its HParams session

    # the losses: the training run's cards, Lightning's epoch out of the way, no hparams/ cards
    tags = tb.wait_for("/data/plugin/scalars/tags", lambda tags: len(tags) == 3)
    assert {"train/loss", "val/loss", "val/kl", "lr", "trainer/epoch"} <= set(tags[names[0]])
    assert "epoch" not in tags[names[0]]
    assert not [tag for run in tags.values() for tag in run if tag.startswith("hparams/")]

    # custom scalars: train and val of each term on one chart, and the learning rate
    layout = tb.get("/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts["loss"] == ["^train/loss$", "^val/loss$"]
    assert charts["kl"] == ["^train/kl$", "^val/kl$"] and "recon" in charts
    assert charts["lr"] == ["^lr$", "^lr-"]  # the model's, with a scheduler; LearningRateMonitor's

    # the config in the Text tab, the network in the Graphs tab
    (text,) = tb.get("/data/plugin/text/text", run=names[1], tag="config/text_summary")
    assert "<pre><code>" in text["text"] and "  latent_dim: 4\n" in text["text"]
    assert tb.get("/data/plugin/graphs/info")[names[1]]["run_graph"]
    too_large = {"limit_attr_size": 1024, "large_attrs_key": "_too_large_attrs"}  # as its page asks
    graph = tb.get("/data/plugin/graphs/graph", run=names[1], **too_large)
    assert "encoder" in graph and "decoder" in graph

    # HParams: the swept key first, no _target_, the tested checkpoint's val/loss as final/
    experiment = tb.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = [info["name"] for info in experiment["hparamInfos"]]
    assert hparams[0] == "model.latent_dim" and experiment["hparamInfos"][0]["differs"]
    assert {"model", "model.optimizer.lr", "data.batch_size", "seed", "scheduler"} <= set(hparams)
    assert not [name for name in hparams if "_target_" in name or "dir" in name]
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"final/val/loss", "final/test/loss", "final/val/kl", "final/test/recon"} <= metrics
    assert {"val/loss", "train/loss"} <= metrics  # the curves' last values

    request = {"experimentName": "", "allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 10}
    groups = tb.get("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert len(groups) == 3
    for group in groups:
        (session,) = group["sessions"]
        job = session["name"].split("/")[0]
        tested = json.loads((sweep_dir / job / "result.json").read_text())["metrics"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["final/val/loss"] == pytest.approx(tested["val/loss"], rel=1e-6)
        assert values["final/test/loss"] == pytest.approx(tested["test/loss"], rel=1e-6)
        assert session["status"] == "STATUS_SUCCESS"
        # the trial ID starts with what tells the jobs apart (the table shows its start)
        name = session["name"].split("/", 1)[1]
        assert group["name"] == f"{name} {sweep_dir.name}/{job}"
        # integers as the config spells them, not HParams' floats (2.00)
        assert group["hparams"]["model.latent_dim"] == {"0": "2", "1": "4", "2": "8"}[job]
