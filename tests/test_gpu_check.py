"""scripts/gpu_check.sh --cpu: every step of the GPU check on the CPU, offline, on synthetic MNIST,
and the JSON it writes (rc, seconds and figures per step)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VAL_SIZE, offline_env, write_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
TRAINING = ["fp32", "bf16", "on_device_true", "on_device_false", "compile"]
STEPS = [*TRAINING, "eval", "ddp", "benchmark"]


def gpu_check(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`bash scripts/gpu_check.sh ARGS` with this interpreter, any download failing at once."""
    env = offline_env() | {"PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def mnist(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "data" / "MNIST" / "raw")
    return tmp_path / "data"


@pytest.mark.slow
def test_every_step_passes_on_the_cpu(mnist: Path, tmp_path: Path):
    out = tmp_path / "out"
    overrides = [f"data.val_size={VAL_SIZE}", "data.batch_size=32"]
    # eight processes that each import torch and Lightning: minutes on a busy 2-core machine
    result = gpu_check(
        "--cpu", "--data", str(mnist), "--out", str(out), "--", *overrides, timeout=600
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-5000:]

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["check"]["mode"] == "cpu"
    assert report["check"]["overrides"] == overrides
    assert report["machine"]["torch"] and report["machine"]["lightning"]
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert (step["status"], step["rc"]) == ("ok", 0), (name, step)
        assert step["seconds"] > 0 and step["command"], (name, step)
    for name in [*TRAINING, "ddp"]:
        figures = report["steps"][name]["figures"]
        assert math.isfinite(figures["test/loss"]), (name, figures)
        assert figures["samples_per_s"] > 0, (name, figures)
    assert "trainer.precision=bf16-mixed" in report["steps"]["bf16"]["command"]
    assert "trainer=ddp_cpu" in report["steps"]["ddp"]["command"]
    assert math.isfinite(report["steps"]["eval"]["figures"]["test/nll_iw"])
    bench = report["steps"]["benchmark"]["figures"]
    assert bench["vae/cpu/lightning_samples_per_s"] > 0, bench
    assert (out / "bench.json").is_file()


def test_a_spent_budget_skips_every_step_and_still_writes_the_json(mnist: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = gpu_check("--cpu", "--data", str(mnist), "--out", str(out), "--budget-s", "0")
    assert result.returncode == 3, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert not report["ok"] and list(report["steps"]) == STEPS
    for step in report["steps"].values():
        assert (step["status"], step["rc"], step["seconds"]) == ("skipped: budget", None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu"], "--data DIR and --out DIR are needed"),
        (["--data"], "--data needs a value"),
        (["--budget-s", "soon", "--data", ".", "--out", "."], "--budget-s takes whole seconds"),
        (["--data", ".", "--out", "."], "has no MNIST/raw/train-images-idx3-ubyte"),
        (["--fast"], "unknown argument '--fast'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str):
    result = gpu_check(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
