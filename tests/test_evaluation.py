"""Evaluation from a checkpoint, latent and likelihood metrics, generated PNGs."""

import csv
import io
import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import free_port, read_events, run_python, run_train, small_run_overrides
from PIL import Image

from aelab.data.batches import TensorImages
from aelab.errors import DataError
from aelab.evaluation.likelihood import importance_weighted_nll
from aelab.evaluation.pictures import scatter_figure
from aelab.evaluation.probes import knn_accuracy, linear_probe_accuracy, pixel_baselines
from aelab.models import VAE


def run_module(module: str, *args: str):
    return run_python("-m", module, *args)


def test_knn_and_linear_probe_on_separable_codes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=generator) * 5
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 5, generator=generator)
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=5) > 0.95
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    assert knn_accuracy(x[:200], y[:200], x[200:], (y[200:] + 1) % 3, k=5) < 0.1


def test_pixel_baselines_are_computed_once_per_dataset_and_split(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    images = (torch.rand(200, 1, 4, 4, generator=g) * 100 + labels.view(-1, 1, 1, 1) * 150).to(
        torch.uint8
    )
    train, test = TensorImages(images[:150], labels[:150]), TensorImages(images[150:], labels[150:])
    first = pixel_baselines(train, test, 3, tmp_path, "toy")
    assert first == {"test/knn_acc_pixels": 1.0, "test/linear_acc_pixels": 1.0}
    (kept,) = (tmp_path / "probes").glob("toy-*.json")
    kept.write_text('{"test/knn_acc_pixels": 0.5, "test/linear_acc_pixels": 0.25}')
    assert pixel_baselines(train, test, 3, tmp_path, "toy")["test/knn_acc_pixels"] == 0.5
    # another k, or other images, is another entry
    assert pixel_baselines(train, test, 5, tmp_path, "toy")["test/knn_acc_pixels"] == 1.0
    flipped = TensorImages(images[150:], 1 - labels[150:])
    assert pixel_baselines(train, flipped, 3, tmp_path, "toy")["test/knn_acc_pixels"] == 0.0
    assert len(list((tmp_path / "probes").glob("toy-*.json"))) == 3
    kept.write_text("[1, 2")
    with pytest.raises(DataError, match=f"{kept}: not a readable cache file"):
        pixel_baselines(train, test, 3, tmp_path, "toy")


def test_pixel_baselines_are_skipped_with_one_line_where_the_floats_would_not_fit(tmp_path, caplog):
    images = torch.zeros(150, 1, 4, 4, dtype=torch.uint8)
    train = TensorImages(images, torch.arange(150) % 2)
    with caplog.at_level(logging.INFO):
        assert pixel_baselines(train, train, 3, tmp_path, "big", max_bytes=4 * 2399) == {}
    assert "No test/knn_acc_pixels, test/linear_acc_pixels: the 150 training images" in caplog.text
    assert not (tmp_path / "probes").exists()
    assert pixel_baselines(train, train, 3, tmp_path, "big", max_bytes=4 * 2400)  # at the limit


def test_importance_weighted_nll_bounds_the_elbo():
    torch.manual_seed(0)
    model = VAE((1, 6, 6), latent_dim=2, net={"_target_": "aelab.nets.MLP", "hidden_dims": [16]})
    images = (torch.rand(20, 1, 6, 6) * 255).to(torch.uint8)
    x = images.float() / 255
    model.eval()
    with torch.no_grad():
        elbo_loss = torch.stack([model.loss_terms(x, x)["loss"] for _ in range(200)]).mean().item()
    nll_1 = importance_weighted_nll(model, images, samples=1)
    nll_k = importance_weighted_nll(model, images, samples=500, batch_elements=1000)
    assert nll_1 == pytest.approx(elbo_loss, rel=0.05)  # K = 1 is the ELBO itself
    assert nll_k < elbo_loss  # the IW bound is tighter


# A sitecustomize.py that makes torch-fidelity look uninstalled, to its importers and to the
# package metadata torchmetrics reads
HIDE_TORCH_FIDELITY = """
import importlib.metadata as metadata
import sys

sys.modules["torch_fidelity"] = None
found, found_version = metadata.distribution, metadata.version


def hidden(name):
    if name.lower().replace("-", "_") == "torch_fidelity":
        raise metadata.PackageNotFoundError(name)


metadata.distribution = lambda name: hidden(name) or found(name)
metadata.version = lambda name: hidden(name) or found_version(name)
"""


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = run_train(
        "model=vae",
        "trainer.max_epochs=2",
        "callbacks.image_grids.save_png=true",
        *small_run_overrides(data_dir),
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _scalars(folder):
    events = read_events(folder)
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def _latent_pictures(folder):
    events = read_events(folder)
    projector = (folder / "projector_config.pbtxt").read_text()
    return set(events.Tags()["images"]), projector


@pytest.mark.slow
def test_latent_pictures_after_training(trained_run):
    images, projector = _latent_pictures(trained_run / "tensorboard")
    assert {"latent/scatter", "latent/interpolation", "latent/traversal"} <= images
    assert "latent/test_codes" in projector and "sprite" in projector and "metadata" in projector


@pytest.mark.slow
def test_per_epoch_pngs(trained_run):
    names = sorted(p.name for p in (trained_run / "images").iterdir())
    assert names == [
        "val_reconstructions_epoch_000.png",
        "val_reconstructions_epoch_001.png",
        "val_samples_epoch_000.png",
        "val_samples_epoch_001.png",
    ]


@pytest.mark.slow
def test_eval_reproduces_test_loss_from_the_checkpoint_alone(trained_run, data_dir, tmp_path):
    best = next(p for p in (trained_run / "checkpoints").iterdir() if p.name.startswith("epoch_"))
    # as after a plain `pip install aelab`: torch-fidelity (the `fid` extra) cannot be imported
    hide = tmp_path / "no_fid"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_TORCH_FIDELITY)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")]),
    }
    # no data folder given: the run's own (from its config.yaml), from another working folder
    result = run_python(
        "-m",
        "aelab.eval",
        f"ckpt_path={best}",
        "iw_samples=20",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = _scalars(trained_run / "tensorboard")
    evaluated = _scalars(tmp_path / "tensorboard")
    for name in ("test/loss", "test/recon", "test/kl"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-4), name
    for name in (
        "test/nll_iw",
        "test/knn_acc",
        "test/linear_acc",
        "test/knn_acc_pixels",
        "test/linear_acc_pixels",
        "test/classifier_acc",
        "test/fd_classifier",
        "test/precision",
        "test/recall",
    ):
        assert name in evaluated and name in result.stdout
    assert 0 < evaluated["test/nll_iw"] < evaluated["test/loss"] + 1
    assert evaluated["test/fd_classifier"] > 0 and 0 <= evaluated["test/precision"] <= 1
    # without torch-fidelity: one line says how to have the Inception FID, and no traceback
    assert "test/fid" not in evaluated and "Traceback" not in result.stderr
    output = (result.stdout + result.stderr).splitlines()
    (skipped,) = [line for line in output if "test/fid skipped" in line]
    assert "torch-fidelity is not installed" in skipped and "aelab[fid]" in skipped
    assert "Test metric" not in result.stdout  # one table, ours: not Lightning's test table too
    assert "GPU available" not in result.stdout + result.stderr  # Lightning at WARNING
    assert 0 <= evaluated["test/knn_acc"] <= 1
    # the metrics and what they came from, in files beside the events
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["metrics"]["test/loss"] == pytest.approx(evaluated["test/loss"], abs=1e-6)
    assert record["settings"]["iw_samples"] == 20 and record["settings"]["checkpoint"] == str(best)
    assert record["settings"]["classifier_recipe"]["epochs"] > 0
    assert record["settings"]["protocol"] == {"name": "cpu", "iw_samples": 1000, "samples": 5000}
    assert record["settings"]["sample_metrics"]["count"] == 5000  # resolved, not ${...}
    assert record["metrics"]["test/classifier_acc"] == pytest.approx(
        evaluated["test/classifier_acc"]
    )
    rows = dict(csv.reader(io.StringIO((tmp_path / "metrics.csv").read_text())))
    assert set(rows) == {"metric"} | set(record["metrics"])
    # every phase said when it started and how long it took (no terminal: lines, not bars)
    log_text = result.stdout + result.stderr
    for name in ("latent codes", "k-NN on codes", "test/nll_iw K=20", "generating"):
        assert f"{name}: " in log_text and re.search(
            f"{re.escape(name)}: .* in [0-9.]+ s", log_text
        )
    images, projector = _latent_pictures(tmp_path / "tensorboard")
    assert {"latent/scatter", "latent/interpolation", "latent/traversal"} <= images
    assert "latent/test_codes" in projector


def _generate(run: Path, out: Path, *overrides: str):
    """`python -m aelab.generate` on the run's last checkpoint, writing into `out`."""
    return run_module(
        "aelab.generate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={out}",
        *overrides,
    )


@pytest.mark.slow
def test_generate_writes_pngs(trained_run, tmp_path):
    result = _generate(trained_run, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = {
        name: Image.open(tmp_path / name).size
        for name in ("samples.png", "reconstructions.png", "interpolations.png")
    }
    assert sizes["samples.png"] == (8 * 30 + 2, 8 * 30 + 2)
    assert sizes["reconstructions.png"] == (16 * 30 + 2, 2 * 30 + 2)
    assert sizes["interpolations.png"] == (10 * 30 + 2, 8 * 30 + 2)


def _generate_here(run: Path, out: Path, *overrides: str) -> list[Path]:
    """aelab.generate's `generate` in this process (`test_generate_writes_pngs` runs the
    command), on the run's last checkpoint, writing into `out`."""
    from hydra import compose, initialize_config_dir

    from aelab.config import CONFIG_DIR, prepare_hydra
    from aelab.generate import generate

    prepare_hydra()
    overrides = (f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *overrides)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("generate", overrides=[*overrides, f"paths.output_dir={out}"])
    out.mkdir(parents=True, exist_ok=True)  # as Hydra makes the run folder
    return generate(cfg)


@pytest.mark.slow
def test_generate_interpolates_more_pairs_than_it_reconstructs(trained_run, tmp_path):
    written = _generate_here(
        trained_run, tmp_path, "num_reconstructions=4", "num_interpolations=12"
    )
    assert {p.name for p in written} >= {"reconstructions.png", "interpolations.png"}
    assert Image.open(tmp_path / "reconstructions.png").size == (4 * 30 + 2, 2 * 30 + 2)
    assert Image.open(tmp_path / "interpolations.png").size == (10 * 30 + 2, 12 * 30 + 2)


@pytest.mark.slow
def test_prior_samples_need_no_data(trained_run, tmp_path, monkeypatch):
    import torchvision.datasets

    from aelab.errors import AelabError

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading: <urlopen error> (offline)")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    out = tmp_path / "out"
    nowhere = tmp_path / "no-data-here"
    overrides = (
        f"data_dir={nowhere}",
        "num_reconstructions=0",
        "num_interpolations=0",
        "traversals.steps=0",
    )
    assert [p.name for p in _generate_here(trained_run, out, *overrides)] == ["samples.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["samples.png"]
    assert not nowhere.exists()
    # asked for test images, the data folder given is the one searched
    with pytest.raises(AelabError) as err:
        _generate_here(trained_run, tmp_path / "out2", f"data_dir={nowhere}")
    assert f"{nowhere}/MNIST/raw" in str(err.value)


@pytest.fixture
def model_leaves_its_device_at_teardown(monkeypatch):
    """A stand-in for a GPU: Lightning's teardown moves the model off the device it ran on (to
    the CPU, on a GPU machine); here to `meta`, where no metric can be computed. Code that used
    the model after teardown would fail. Only the autoencoder leaves: the feature classifier,
    trained by a Trainer of its own when no earlier test cached it, is moved back to its device
    by the code, which `meta` could not stand in for."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from aelab.models import AutoencoderModule

    teardown = SingleDeviceStrategy.teardown

    def teardown_off_device(self):
        module = self.lightning_module
        teardown(self)
        if isinstance(module, AutoencoderModule):
            module.to("meta")

    monkeypatch.setattr(SingleDeviceStrategy, "teardown", teardown_off_device)


@pytest.mark.slow
def test_eval_computes_its_metrics_on_the_device_the_model_runs_on(
    trained_run, tmp_path, model_leaves_its_device_at_teardown
):
    from hydra import compose, initialize_config_dir

    from aelab.config import CONFIG_DIR, prepare_hydra
    from aelab.eval import evaluate

    prepare_hydra()
    best = next((trained_run / "checkpoints").glob("epoch_*.ckpt"))
    overrides = [f"ckpt_path={best}", "iw_samples=5", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    metrics = evaluate(cfg)
    for name in ("test/knn_acc", "test/linear_acc", "test/nll_iw", "test/loss"):
        assert torch.isfinite(torch.tensor(metrics[name])), name
    assert "latent/scatter" in _latent_pictures(tmp_path / "tensorboard")[0]


@pytest.mark.slow
# the best checkpoint's weights then load into the `meta` stand-in: torch warns it copies nothing
@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_latent_pictures_are_drawn_before_the_model_leaves_its_device(
    compose_cfg, data_dir, tmp_path, model_leaves_its_device_at_teardown
):
    from aelab.training import train

    cfg = compose_cfg(
        "debug=fast", "test=false", *small_run_overrides(data_dir), output_dir=tmp_path
    )
    train(cfg)
    assert "latent/scatter" in _latent_pictures(tmp_path / "tensorboard")[0]


def test_eval_needs_the_run_folder(tmp_path):
    stray = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, stray)  # a checkpoint file, outside any run folder
    result = run_module("aelab.eval", f"ckpt_path={stray}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert "no saved run config" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_tensorboard_serves_the_run(trained_run):
    """A real TensorBoard server on the run folder, read back over HTTP on localhost."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={trained_run}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str):
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                runs = get("/data/runs")
                if "tensorboard" in runs:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not start"
            time.sleep(0.5)
        run = "tensorboard"
        assert not [name for name in runs if name.startswith(f"{run}/")]  # no HParams twin
        scalars = get("/data/plugin/scalars/tags")[run]
        assert {"train/loss", "val/loss", "test/loss", "val/kl"} <= set(scalars)
        images = get("/data/plugin/images/tags")[run]
        assert {"val/reconstructions", "val/samples", "latent/scatter", "latent/traversal"} <= set(
            images
        )
        assert "latent/test_codes" in json.dumps(get("/data/plugin/projector/info?run=" + run))
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("dims", [1, 2, 3, 5])
def test_scatter_figure_for_any_code_size(dims):
    codes, labels = torch.randn(50, dims), torch.arange(50) % 10
    figure = scatter_figure(codes, labels)
    assert figure.axes[0].get_title().startswith(f"{dims}-d" if dims <= 3 else "codes, PCA")
    figure.savefig(io.BytesIO(), format="png")  # renders, as TensorBoard's add_figure does


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "extra"), [("aelab.eval", ["iw_samples=0"]), ("aelab.generate", [])]
)
def test_eval_and_generate_write_into_folders_of_their_own(trained_run, tmp_path, module, extra):
    """Not into the training run's folder, which `ckpt_path` points into."""
    before = sorted(p.relative_to(trained_run) for p in trained_run.rglob("*"))
    result = run_module(
        module,
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    task = module.split(".")[1]
    (own,) = (tmp_path / "logs" / task / "runs").iterdir()
    assert (own / ".hydra" / "config.yaml").is_file() and (own / f"{task}.log").is_file()
    assert sorted(p.relative_to(trained_run) for p in trained_run.rglob("*")) == before


def test_log_importance_weights_match_the_distributions_by_hand():
    """log w = log Bernoulli(x | decoder(z)) + log N(z; 0, I) - log N(z; mu, sigma), same noise."""
    from torch.distributions import Bernoulli, Normal

    torch.manual_seed(0)
    model = VAE((1, 2, 2), latent_dim=3, net={"_target_": "aelab.nets.MLP", "hidden_dims": [4]})
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    with torch.no_grad():
        torch.manual_seed(1)
        log_w = model.log_importance_weights(x, samples=4)
        torch.manual_seed(1)
        mu, logvar = model.posterior(x)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + q.scale * torch.randn(4, *mu.shape)
        logits = model.net.decoder(z.flatten(0, 1)).view(4, 2, 1, 2, 2)
        expected = (
            Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - q.log_prob(z).sum(-1)
        )
    assert log_w.shape == (4, 2)
    torch.testing.assert_close(log_w, expected)
