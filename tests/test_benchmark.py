"""scripts/benchmark.py: its five training loops, the ratios it reports, its JSON, the bound it
times, and what it refuses."""

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, VAL_SIZE, run_python

from aelab.models import VAE


@pytest.mark.slow
def test_benchmark_times_the_five_loops_and_writes_json(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = run_python(
        str(REPO / "scripts" / "benchmark.py"),
        *("--data-dir", str(data_dir), "--models", "ae", "--batch-size", "64"),
        *("--warmup", "0", "--epochs", "1", "--rounds", "2", "--json", str(out)),
        *("--startup-runs", "1"),
        f"data.val_size={VAL_SIZE}",
        "model.latent_dim=3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a/c" in result.stdout and "ae" in result.stdout
    report = json.loads(out.read_text())
    assert report["meta"]["rounds"] == 2
    assert report["meta"]["cpu"] and report["meta"]["gpu"] is None
    assert f"Machine: {report['meta']['cpu']}, " in result.stdout
    assert report["meta"]["overrides"] == [f"data.val_size={VAL_SIZE}", "model.latent_dim=3"]
    (row,) = report["results"]
    assert row["device"] == "cpu"
    names = ("lightning", "tutorial", "bare", "lightning_alone", "plain")
    speeds = [row[f"{name}_samples_per_s"] for name in names]
    assert all(speed > 0 for speed in speeds)
    assert row["lightning_vs_bare"] == pytest.approx(speeds[0] / speeds[2])
    assert row["lightning_vs_tutorial"] == pytest.approx(speeds[0] / speeds[1])
    assert row["alone_vs_bare"] == pytest.approx(speeds[3] / speeds[2])
    assert row["speedups_gain"] == pytest.approx(speeds[0] / speeds[4])
    assert "a/a'" in result.stdout
    step_ms = [1e3 * 64 / speed for speed in speeds]  # batch 64
    assert row["lightning_extra_ms_per_step"] == pytest.approx(step_ms[0] - step_ms[2])
    assert row["template_extra_ms_per_step"] == pytest.approx(step_ms[0] - step_ms[3])
    assert row["bare_median_samples_per_s"] <= row["bare_samples_per_s"]
    assert len(row["lightning_vs_bare_per_round"]) == 2
    assert row["first_per_round"] == ["lightning", "bare"]  # (a), (c), (d), (a') take turns
    # best a / best c lies between the rounds' own ratios
    per_round = row["lightning_vs_bare_per_round"]
    assert min(per_round) <= row["lightning_vs_bare"] * (1 + 1e-9)
    assert row["lightning_vs_bare"] <= max(per_round) * (1 + 1e-9)
    assert "a/c in each round" in result.stdout
    assert f"(a) adds {row['lightning_extra_ms_per_step']:.2f} ms to each step" in result.stdout
    assert f"(d) Lightning alone: {speeds[3]:,.0f} samples/s" in result.stdout
    assert set(report["startup_seconds"]) == {"--help", "--cfg job"}
    assert all(0 < seconds < 60 for seconds in report["startup_seconds"].values())


def test_benchmark_times_lightning_alone_without_callbacks_logger_or_bar(data_dir):
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts/benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    args = SimpleNamespace(data_dir=data_dir, batch_size=64, device="cpu", overrides=[])
    alone = benchmark._config("vae", args, epochs=1, out=".", alone=True)
    full = benchmark._config("vae", args, epochs=1, out=".")
    assert list(alone.callbacks) == ["epoch_timer"] and not alone.logger
    assert not (alone.trainer.enable_checkpointing or alone.trainer.enable_progress_bar)
    assert not alone.trainer.enable_model_summary
    assert {"model_checkpoint", "progress_bar", "epoch_timer"} <= set(full.callbacks)
    assert full.logger and alone.model == full.model and alone.data == full.data
    plain = benchmark._config("vae", args, epochs=1, out=".", plain=True)
    assert plain.speedups is False and full.speedups is True
    assert plain.callbacks == full.callbacks and plain.model == full.model


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is there")
def test_benchmark_refuses_a_gpu_that_is_not_there(data_dir, tmp_path):
    result = run_python(
        str(REPO / "scripts" / "benchmark.py"),
        *("--data-dir", str(data_dir), "--devices", "cuda", "--json", str(tmp_path / "b.json")),
    )
    assert result.returncode == 2
    assert "--devices cuda: torch sees no CUDA device" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "b.json").exists()


def test_benchmark_times_nll_iw_against_a_bare_loop_of_the_same_bound(data_dir):
    """The benchmark's (e) computes the bound aelab computes: same seed, same estimate."""
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts/benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    torch.manual_seed(0)
    vae = VAE((1, 28, 28), latent_dim=4, net={"_target_": "aelab.nets.MLP", "hidden_dims": [8]})
    args = SimpleNamespace(
        data_dir=data_dir, device="cpu", rounds=2, nll_iw_images=5, nll_iw_samples=3000
    )
    row = benchmark.nll_iw_row("vae", vae, args)
    assert row["images"] == 5 and row["samples"] == 3000
    assert row["aelab_nll"] == pytest.approx(row["bare_nll"], rel=1e-5)
    assert 0 < row["aelab_nll"] < 784 * math.log(2) * 2
    assert len(row["aelab_seconds_per_round"]) == len(row["bare_seconds_per_round"]) == 2
    assert row["aelab_vs_bare"] == pytest.approx(row["aelab_seconds"] / row["bare_seconds"])
