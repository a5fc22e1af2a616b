"""Run every command the README shows, at the smallest budget, as a newcomer would after
`pip install -e ".[dev]"`: what the newcomer's page says to type must work. CI runs it after the
tests, outside pytest (whose time budget is its own), on small synthetic MNIST and Fashion-MNIST
files written here (offline; no real data needed).

Every command of the README's bash blocks and command tables needs an entry in COMMANDS, which
says how it runs here (the overrides that make it small, `<run>` standing for a run the script
trained first) or why it cannot (a GPU, a SLURM cluster): the script fails on a README command
it does not know, so the README cannot gain a command that nothing runs.

    python scripts/check_readme_commands.py [--work DIR] [--only TEXT]

Prints one line per command and writes `<work>/commands.json` (command, exit code, seconds).
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST, VAL_SIZE = 600, 200, 100
# What makes a training small here; `{data}` is the synthetic data folder.
SMALL = (
    "debug=fast paths.data_dir={data} paths.log_dir={logs} data.val_size=100 "
    "data.batch_size=32 data.source.system_dirs=[] trainer.accelerator=cpu"
)
EVAL_SMALL = "iw_samples=5 sample_metrics.count=64 sample_metrics.classifier_epochs=1"
# README command (as written, whitespace collapsed) -> how it runs here: the command with the
# README's placeholders filled in and its budget made small, or None and why it cannot run here.
COMMANDS: dict[str, tuple[str | None, str]] = {
    'pip install -e ".[dev]"': (None, "the install this script runs in"),
    "pytest": (None, "CI runs the tests before this script"),
    "tensorboard --logdir logs": (
        "tensorboard --logdir {logs} --port 0 --host 127.0.0.1",
        "serves: started, checked alive for 10 s, stopped",
    ),
    "python train.py model=vae data=fashion": (
        "python train.py model=vae data=fashion " + SMALL,
        "",
    ),
    "python train.py model=vae data=mnist paths.data_dir=/path/to/data trainer.max_epochs=10": (
        "python train.py model=vae data=mnist " + SMALL,
        "",
    ),
    "python -m aelab.eval ckpt_path=logs/train/runs/<run>/checkpoints/epoch_009.ckpt": (
        "python -m aelab.eval ckpt_path={run}/checkpoints/epoch_000.ckpt " + EVAL_SMALL,
        "",
    ),
    "python -m aelab.generate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt": (
        "python -m aelab.generate ckpt_path={run}/checkpoints/last.ckpt",
        "",
    ),
    (
        "python -m aelab.results paths.data_dir=/path/to/data table=models epochs=10 "
        "protocol=paper iw_samples=1000 output=docs/results.md"
    ): (
        "python -m aelab.results paths.data_dir={data} table=models epochs=1 protocol=paper "
        "only=[ae] table.datasets=[mnist] seeds=[1] iw_samples=5 sample_count=64 "
        "output={work}/results.md "
        "train_overrides=['debug=fast','data.val_size=100','data.source.system_dirs=[]'] "
        "eval_overrides=['sample_metrics.classifier_epochs=1']",
        "one row, one seed, into a scratch file rather than the clone's docs",
    ),
    "python train.py -m model=ae,vae seed=1,2,3": (
        "python train.py -m model=ae,vae seed=1,2 " + SMALL,
        "two seeds",
    ),
    "python train.py hparams_search=vae_optuna hydra.sweeper.n_trials=20": (
        "python train.py hparams_search=vae_optuna hydra.sweeper.n_trials=2 " + SMALL,
        "two trials",
    ),
    "python train.py -m hydra/launcher=processes hydra.launcher.n_jobs=2 ...": (
        "python train.py -m hydra/launcher=processes hydra.launcher.n_jobs=2 seed=1,2 " + SMALL,
        "",
    ),
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=P trainer=gpu ...": (
        None,
        "needs a SLURM cluster (tests/test_sweeps.py runs the same jobs with submitit_local)",
    ),
    "python train.py trainer=gpu": (None, "needs a GPU (scripts/gpu_check.sh)"),
    "python train.py trainer=ddp": (None, "needs GPUs (scripts/gpu_check.sh)"),
    "python train.py trainer=ddp_cpu": ("python train.py trainer=ddp_cpu " + SMALL, ""),
}
PROGRAMS = ("python ", "pip ", "pytest", "tensorboard ", "aelab-")


def readme_commands(readme: str) -> list[str]:
    """The commands of the README's bash blocks (comments dropped) and of its tables' first
    cells, whitespace collapsed."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        found += [line.split("  #")[0] for line in block.splitlines()]
    found += re.findall(r"^\| `([^`]+)` \|", readme, re.M)
    commands = [" ".join(c.split()) for c in found]
    return [c for c in dict.fromkeys(commands) if c.startswith(PROGRAMS)]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_data(folder: Path) -> None:
    """Ten blurry prototypes plus noise, as MNIST and Fashion-MNIST in torchvision's layout."""
    rng = np.random.default_rng(0)
    prototypes = np.kron(rng.random((10, 7, 7)), np.ones((4, 4)))
    for name in ("MNIST", "FashionMNIST"):
        for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
            labels = rng.integers(0, 10, n)
            images = np.clip(prototypes[labels] * 220 + rng.normal(0, 15, (n, 28, 28)), 0, 255)
            raw = folder / name / "raw"
            write_idx(raw / f"{split}-images-idx3-ubyte", images.astype(np.uint8))
            write_idx(raw / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8))


def run(command: str, cwd: Path, work: Path) -> tuple[int, str]:
    """Run `command` (python: this interpreter) in `cwd`, offline, caching into `work`; a
    server is started, checked alive for 10 s and stopped."""
    args = command.split()
    if args[0] == "python":
        args[0] = sys.executable
    elif args[0] == "tensorboard":
        args = [sys.executable, "-m", "tensorboard.main", *args[1:]]
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    env = {**os.environ, **offline, "AELAB_CACHE_DIR": str(work / "cache")}
    if "tensorboard" in command:
        server = subprocess.Popen(args, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(10)
        alive = server.poll() is None
        server.terminate()
        _, err = server.communicate(timeout=30)
        return (0 if alive else 1), err
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


def newest_run(logs: Path) -> Path | None:
    runs = sorted((logs / "train" / "runs").glob("*/checkpoints/last.ckpt"))
    return runs[-1].parent.parent if runs else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--only", default="", help="run only commands containing this text")
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="aelab-readme-"))
    commands = readme_commands((REPO / "README.md").read_text())
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        print(f"README commands this script does not know: {unknown}; add them to COMMANDS")
        return 1
    write_data(work / "data")
    report: list[dict] = []
    failed = 0
    for i, command in enumerate(commands, 1):
        here, why = COMMANDS[command]
        if options.only not in command:
            continue
        if here is None:
            print(f"[{i}/{len(commands)}] skipped: {command} ({why})", flush=True)
            report.append({"command": command, "skipped": why})
            continue
        run_folder = newest_run(work / "logs")
        filled = here.format(data=work / "data", logs=work / "logs", work=work, run=run_folder)
        start = time.perf_counter()
        code, output = run(filled, REPO if "train.py" in filled else work, work)
        seconds = round(time.perf_counter() - start, 1)
        failed += code != 0
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"[{i}/{len(commands)}] {status} in {seconds} s: {command}", flush=True)
        if code != 0:
            print("    " + "\n    ".join(output.strip().splitlines()[-15:]))
        report.append({"command": command, "ran": filled, "exit": code, "seconds": seconds})
    (work / "commands.json").write_text(json.dumps(report, indent=2))
    skipped = sum("skipped" in r for r in report)
    print(f"report: {work / 'commands.json'}")
    print(f"readme: {len(report) - skipped - failed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
