"""logger=many (TensorBoard, CSV, MLflow) and logger=wandb, in one short run (each logger's
own test below composes it alone), read back with each logger's own client; a real
`mlflow server` serves the MLflow run over its REST API."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, read_events, small_run_overrides

import aelab
from aelab.errors import ConfigError

IMAGES = {"val/reconstructions", "val/samples", "latent/scatter", "latent/interpolation"}


def tiny(data_dir: Path, log_dir: Path, *overrides: str) -> list[str]:
    """A run of two training batches whose pictures are small."""
    return [
        *small_run_overrides(data_dir),
        f"paths.log_dir={log_dir}",
        "debug=fast",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.latent_pictures.num_points=64",
        "callbacks.image_grids.num_samples=16",
        *overrides,
    ]


@pytest.fixture(scope="module")
def offline_wandb(tmp_path_factory):
    """W&B as on a machine that never logged in: no key, no netrc, no WANDB_MODE."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
            patch.delenv(name, raising=False)
        patch.setenv("NETRC", str(tmp_path_factory.mktemp("home") / "netrc"))
        patch.setenv("WANDB_SILENT", "true")
        yield


@pytest.fixture(scope="module")
def run_of_all(data_dir, tmp_path_factory, offline_wandb):
    """One short run with every logger: logger=many (TensorBoard, CSV, MLflow) and W&B."""
    logs = tmp_path_factory.mktemp("logs")
    return aelab.fit(aelab.compose(tiny(data_dir, logs, "logger=[many,wandb]")))


def mlflow_store(run) -> str:
    return f"sqlite:///{run.folder / 'mlflow' / 'mlflow.db'}"


@pytest.mark.slow
def test_many_reaches_tensorboard_csv_and_mlflow(run_of_all):
    import pandas as pd
    from mlflow import MlflowClient

    final = run_of_all.metrics
    events = read_events(run_of_all.folder / "tensorboard")
    assert {"val/loss", "train/loss"} <= set(events.Tags()["scalars"])
    assert set(events.Tags()["images"]) >= IMAGES

    csv = pd.read_csv(run_of_all.folder / "csv" / "metrics.csv")
    assert csv["val/loss"].notna().any()
    assert csv["final/val/loss"].dropna().tolist() == pytest.approx([final["val/loss"]])

    client = MlflowClient(mlflow_store(run_of_all))
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == str(run_of_all.config.model.latent_dim)
    assert run.data.metrics["final/val/loss"] == pytest.approx(final["val/loss"])
    assert run.data.metrics["test/loss"] == pytest.approx(final["test/loss"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    images = {
        a.path.split("/")[1].split("+")[0] for a in client.list_artifacts(run.info.run_id, "images")
    }
    assert {tag.replace("/", "~") for tag in IMAGES} <= images


def test_the_logger_options_compose_to_the_loggers_of_the_run(compose_cfg):
    many, both = compose_cfg("logger=many").logger, compose_cfg("logger=[many,wandb]").logger
    assert many.keys() == {"tensorboard", "csv", "mlflow"}
    assert compose_cfg("logger=mlflow").logger == {"mlflow": many.mlflow}
    assert compose_cfg("logger=wandb").logger == {"wandb": both.wandb}


def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file (`run-ID.wandb`): W&B's own protobuf records in LevelDB's
    log format (32 KiB blocks of chunks with a 7-byte header), after a 7-byte file header.
    W&B's Python package no longer ships a reader, hence these lines."""
    from wandb.proto import wandb_internal_pb2

    raw, block = run_file.read_bytes(), 32768
    pos, chunk, records = 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunk += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def key_of(item) -> str:
    """A history or summary item's name (`val/loss`; `val/samples/_type` for an image's field)."""
    return "/".join(item.nested_key) if item.nested_key else item.key


@pytest.mark.slow
def test_wandb_runs_offline_without_a_key(run_of_all):
    (run_dir,) = (run_of_all.folder / "wandb").glob("offline-run-*")
    records = wandb_records(next(run_dir.glob("run-*.wandb")))
    history = [
        {key_of(item): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    summary: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary |= {key_of(item): json.loads(item.value_json) for item in r.summary.update}
    assert [h["val/loss"] for h in history if "val/loss" in h]
    assert summary["val/loss"] == pytest.approx(run_of_all.metrics["val/loss"])
    assert summary["test/loss"] == pytest.approx(run_of_all.metrics["test/loss"])
    logged_images = {k.rsplit("/", 1)[0] for h in history for k in h if k.endswith("/_type")}
    assert logged_images >= IMAGES
    assert list((run_dir / "files" / "media" / "images" / "latent").glob("scatter_*.png"))
    assert (run_dir / "files" / "config.yaml").is_file()


def get_json(url: str, query: dict | None = None, body: dict | None = None) -> dict:
    """GET `url?query`, or POST `body` as JSON."""
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_server_serves_the_run(run_of_all, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            mlflow_store(run_of_all),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # its background job runner (huey) doubles the start-up time; this test runs no job
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
                time.sleep(0.2)
        experiment = get_json(
            f"{base}/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": "train"}
        )
        experiment_id = experiment["experiment"]["experiment_id"]
        search = {"experiment_ids": [experiment_id]}
        (run,) = get_json(f"{base}/api/2.0/mlflow/runs/search", body=search)["runs"]
        run_id = run["info"]["run_id"]
        history = get_json(
            f"{base}/api/2.0/mlflow/metrics/get-history",
            {"run_id": run_id, "metric_key": "val/loss"},
        )
        assert [m["value"] for m in history["metrics"]]
        final = get_json(
            f"{base}/api/2.0/mlflow/metrics/get-history",
            {"run_id": run_id, "metric_key": "final/val/loss"},
        )
        assert final["metrics"][0]["value"] == pytest.approx(run_of_all.metrics["val/loss"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def test_a_missing_logger_package_names_its_extra(compose_cfg, monkeypatch, tmp_path):
    from hydra.utils import instantiate

    import aelab.loggers.extras

    monkeypatch.setattr(aelab.loggers.extras, "find_spec", lambda name: None)
    for name in ("mlflow", "wandb"):
        cfg = compose_cfg(f"logger={name}", output_dir=tmp_path)
        with pytest.raises(Exception) as caught:
            instantiate(cfg.logger[name])
        problem = aelab.errors.root_cause(caught.value)
        assert isinstance(problem, ConfigError)
        assert str(problem) == (
            f"logger={name} needs the {name} package, which is not installed: "
            f'pip install -e ".[{name}]"'
        )


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "offline"),
        ({"WANDB_API_KEY": "x" * 40}, "online"),
        ({"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}, "offline"),
        ({"WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_MODE": "dryrun"}, "offline"),
    ],
)
def test_wandb_mode(env, mode, monkeypatch, tmp_path):
    from aelab.loggers.wandb import wandb_mode

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert wandb_mode() == mode


def test_wandb_mode_reads_the_netrc_of_wandb_login(monkeypatch, tmp_path):
    from aelab.loggers.wandb import wandb_mode

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes' is not allowed"):
        wandb_mode()


def test_a_misspelt_mlflow_key_is_one_line_though_the_logger_hands_kwargs_on(compose_cfg, tmp_path):
    """aelab's MLFlowLogger takes **kwargs for Lightning's: the check follows them there."""
    from omegaconf import open_dict

    from aelab.errors import ConfigError
    from aelab.validation import check_arguments

    cfg = compose_cfg("logger=mlflow", output_dir=tmp_path)
    check_arguments("logger.mlflow", cfg.logger.mlflow)
    with open_dict(cfg):
        cfg.logger.mlflow.experimnt_name = "x"
    with pytest.raises(ConfigError, match=r"^logger.mlflow.experimnt_name is not an argument"):
        check_arguments("logger.mlflow", cfg.logger.mlflow)
