#!/usr/bin/env bash
# Check aelab's GPU paths in one command on a lent GPU machine, each step timed, under a timeout,
# logged to OUT/gpu_check.log: VAE runs on MNIST (2 epochs) in fp32 and bf16-mixed, with the data
# on and off the GPU (data.on_device=true|false), with model.compile=true; the eval of the fp32
# run's best checkpoint (test/nll_iw, 5000 importance samples); a one-GPU DDP run; and
# scripts/benchmark.py (last: the longest, so the budget cuts it first). OUT/gpu_check.json holds
# the machine (GPU, torch, Lightning, date) and per step the command, rc, seconds, status and
# figures: test/* and val/* of each training run (its csv/metrics.csv) and its samples/s (its
# train.log: the last epoch's steps x batch size / seconds, validation included), the eval's test/*
# (its csv/metrics.csv), the benchmark's samples/s (bench.json). A step is "ok" with rc 0 and a
# finite test/loss (test/nll_iw for the eval).
#
# On the GPU machine (torch and Lightning there, no network), with the wheels that
# `bash scripts/gpu_wheels.sh wheels` downloaded here:
#
#   bash scripts/gpu_check.sh --data /path/to/data --out "$OUT" --wheels wheels
#
# Through the device tool add `--runs /tmp/gpu_check_runs`: only 8 files of $OUT come back.
# On the CPU, with a few batches per run (tests/test_gpu_check.py runs this):
#
#   bash scripts/gpu_check.sh --cpu --data data --out /tmp/gpu_check
#
# Options:
#   --data DIR     holds MNIST/raw/ (torchvision's layout), unpacked or .gz only (11 MB to carry,
#                  unpacked into RUNS/data); nothing is downloaded
#   --out DIR      gets gpu_check.log, gpu_check.json and bench.json
#   --runs DIR     the runs' folders, RUNS/fp32, RUNS/eval, ... (default OUT/runs)
#   --wheels DIR   first install offline what DIR/requirements.txt names, then aelab itself (-e)
#   --budget-s N   time for the whole check (default 330): a step with under 20 s left is recorded
#                  as "skipped: budget", and no step's timeout goes past the budget
#   --cpu          the same steps on the CPU, a few batches each
#   -- OVERRIDES   Hydra overrides added to every training run and to the benchmark
# PYTHON names the interpreter (default: python from PATH, else python3). Exit status: 0 every
# step passed, 1 a step failed, 2 bad arguments, 3 nothing failed but steps were skipped.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() {
    echo "error: $*" >&2
    exit 2
}

PY="${PYTHON:-python}"
if [[ -z ${PYTHON:-} ]] && ! command -v python >/dev/null && command -v python3 >/dev/null; then
    PY=python3 # the GPU machine's image may have only python3
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CPU=0 DATA="" OUT="" RUNS="" WHEELS="" BUDGET_S=330
EXTRA=()
while (($#)); do
    case $1 in
        --cpu) CPU=1 ;;
        --data | --out | --runs | --wheels | --budget-s)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --data) DATA=$2 ;;
                --out) OUT=$2 ;;
                --runs) RUNS=$2 ;;
                --wheels) WHEELS=$2 ;;
                --budget-s) BUDGET_S=$2 ;;
            esac
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            EXTRA=("$@")
            break
            ;;
        *) die "unknown argument '$1' (--help lists the options)" ;;
    esac
    shift
done
[[ -n $DATA && -n $OUT ]] || die "--data DIR and --out DIR are needed (--help lists the options)"
command -v "$PY" >/dev/null || die "no $PY here: PYTHON=/path/to/python names another"
[[ $BUDGET_S =~ ^[0-9]+$ ]] || die "--budget-s takes whole seconds, not '$BUDGET_S'"
compgen -G "$DATA/MNIST/raw/train-images-idx3-ubyte*" >/dev/null ||
    die "--data $DATA has no MNIST/raw/train-images-idx3-ubyte[.gz]; this check downloads nothing"
[[ -z $WHEELS || -f $WHEELS/requirements.txt ]] ||
    die "--wheels $WHEELS has no requirements.txt (scripts/gpu_wheels.sh makes the folder)"

DATA=$(cd "$DATA" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUNS=${RUNS:-$OUT/runs}
mkdir -p "$RUNS"
RUNS=$(cd "$RUNS" && pwd)
[[ -z $WHEELS ]] || WHEELS=$(cd "$WHEELS" && pwd)
cd "$REPO"

LOG=$OUT/gpu_check.log
STATE=$RUNS/.gpu_check # steps.tsv and machine.json, for the JSON at the end
STEP_NAMES=(install fp32 bf16 on_device_true on_device_false compile eval ddp benchmark)
rm -rf "$STATE" "$RUNS/data" "$OUT/gpu_check.json" "$OUT/bench.json"
for name in "${STEP_NAMES[@]}"; do rm -rf "${RUNS:?}/$name"; done
mkdir -p "$STATE"
: >"$LOG"
: >"$STATE/steps.tsv"
export PYTHONUNBUFFERED=1
MIN_STEP_S=20
SKIP="" # once set (no CUDA, a failed install), every later step is recorded as skipped with it
NOT_READY="" # set before one step: why that step cannot run
FATAL="" # why the check could not run (no CUDA, aelab does not import): the exit status is 1

if ((CPU)); then
    MODE=cpu
    TRAINER=(trainer=cpu)
    SHORT=(trainer.max_epochs=1 ++trainer.limit_train_batches=3 ++trainer.limit_val_batches=2
        ++trainer.limit_test_batches=2)
    DDP=(trainer=ddp_cpu trainer.devices=1)
    # the classifier's and the likelihood timing's work cut to what shows that they run
    EVAL=(iw_samples=20 accelerator=cpu sample_metrics.classifier_epochs=1)
    BENCH=(--devices cpu --epochs 1 --rounds 1 --warmup 0 --startup-runs 1 --nll-iw-samples 50)
else
    MODE=gpu
    TRAINER=(trainer=gpu)
    SHORT=(trainer.max_epochs=2)
    DDP=(trainer=ddp trainer.devices=1 trainer.max_epochs=1)
    EVAL=(iw_samples=5000)
    BENCH=(--devices cuda --epochs 2 --rounds 2)
fi
# csv: the metrics the JSON takes, from <run>/csv/metrics.csv; tensorboard: the default logger,
# so that the image grids and latent pictures run on the GPU too
COMMON=(model=vae data=mnist "logger=[tensorboard,csv]" "${SHORT[@]}")

say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

record() { # NAME KIND STATUS RC START END RUN_DIR COMMAND
    local IFS=$'\t'
    echo "$*" >>"$STATE/steps.tsv"
}

# run_step NAME KIND CAP_S RUN_DIR CMD...: run CMD under a timeout of CAP_S (at most the budget
# left), its output into the log, and record it (KIND says how the JSON reads its figures);
# or record why it did not run: SKIP, the budget, or NOT_READY (this step's own reason).
run_step() {
    local name=$1 kind=$2 cap=$3 run_dir=$4
    shift 4
    local cmd="$*" left=$((BUDGET_S - SECONDS)) why_not="" note=""
    if [[ -n $SKIP ]]; then
        why_not=$SKIP
    elif ((left < MIN_STEP_S)); then
        why_not="skipped: budget" note=" ($left s of $BUDGET_S s left)"
    elif [[ -n $NOT_READY ]]; then
        why_not=$NOT_READY
    fi
    NOT_READY=""
    if [[ -n $why_not ]]; then
        say "$name: $why_not$note"
        record "$name" "$kind" "$why_not" "" "" "" "$run_dir" "$cmd"
        return
    fi
    local limit=$((cap < left ? cap : left)) rc=0 start end status=ran
    say "$name: $cmd (timeout ${limit} s)"
    start=${EPOCHREALTIME/[.,]/} # microseconds
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1 </dev/null || rc=$?
    end=${EPOCHREALTIME/[.,]/}
    if ((rc == 124 || rc == 137)); then
        status="failed: timed out after ${limit} s"
    elif ((rc != 0)); then
        status="failed: rc $rc"
    fi
    say "$name: rc $rc in $(((end - start) / 1000000)) s"
    record "$name" "$kind" "$status" "$rc" "$start" "$end" "$run_dir" "$cmd"
}

train_step() { # NAME CAP_S OVERRIDES...: a training run in RUNS/NAME
    local name=$1 cap=$2
    shift 2
    run_step "$name" train "$cap" "$RUNS/$name" "$PY" train.py "${COMMON[@]}" "$@" \
        "paths.data_dir=$DATA" "hydra.run.dir=$RUNS/$name" "${EXTRA[@]}"
}

say "gpu_check ($MODE): data $DATA, out $OUT, runs $RUNS, budget ${BUDGET_S} s, $PY"

# aelab reads .gz files, but torchvision (the benchmark's tutorial loop) only unpacked ones:
# .gz alone (11 MB, not 55, to carry to the GPU machine) are unpacked into RUNS/data.
if [[ ! -f $DATA/MNIST/raw/train-images-idx3-ubyte ]]; then
    mkdir -p "$RUNS/data/MNIST/raw"
    for gz in "$DATA"/MNIST/raw/*.gz; do
        gunzip -c "$gz" >"$RUNS/data/MNIST/raw/$(basename "${gz%.gz}")"
    done
    DATA=$RUNS/data
    say "unpacked the .gz files into $DATA"
fi

if [[ -n $WHEELS ]]; then
    run_step install install 120 "" "$PY" -m pip install --no-index --find-links "$WHEELS" \
        -r "$WHEELS/requirements.txt"
    if [[ $(tail -n1 "$STATE/steps.tsv" | cut -f3) != ran ]]; then
        SKIP="skipped: the install failed"
    elif ! "$PY" -m pip install --no-index --no-deps --no-build-isolation -e "$REPO" \
        >>"$LOG" 2>&1; then
        say "pip install -e failed (see above): aelab comes from PYTHONPATH=$REPO/src"
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi

# The machine, and whether aelab imports (and, without --cpu, whether torch sees a GPU).
rc=0
"$PY" - "$STATE/machine.json" "$MODE" >>"$LOG" 2>&1 <<'EOF' || rc=$?
import datetime
import importlib.metadata as md
import json
import os
import platform
import socket
import sys


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1] for line in f if line.startswith("model name")]
        return names[0].strip()
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


path, mode = sys.argv[1:]
info = {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "host": socket.gethostname(),
    "cpu": cpu_name(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "executable": sys.executable,
}
info |= {name: version(name) for name in ("torch", "lightning", "hydra-core", "omegaconf")}
info["gpu"] = None
try:
    import aelab
    import aelab.config  # imports Hydra and OmegaConf

    info["aelab"] = os.path.dirname(aelab.__file__)
    if mode == "gpu":
        import torch

        info |= {"torch": torch.__version__, "cuda": torch.version.cuda}
        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory
            info |= {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_count": torch.cuda.device_count(),
                "gpu_memory_gib": round(memory / 2**30, 1),
            }
finally:
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
print(json.dumps(info, indent=2))
sys.exit(3 if mode == "gpu" and info["gpu"] is None else 0)
EOF
if ((rc == 3)); then
    FATAL="torch sees no CUDA device (--cpu checks the CPU)"
elif ((rc != 0)); then
    FATAL="aelab, Hydra or torch does not import with $PY (see gpu_check.log)"
fi
if [[ -n $FATAL ]]; then
    say "error: $FATAL"
    SKIP=${SKIP:-"skipped: $FATAL"}
fi

train_step fp32 90 "${TRAINER[@]}"
train_step bf16 90 "${TRAINER[@]}" trainer.precision=bf16-mixed
train_step on_device_true 90 "${TRAINER[@]}" data.on_device=true
train_step on_device_false 90 "${TRAINER[@]}" data.on_device=false
train_step compile 150 "${TRAINER[@]}" model.compile=true

shopt -s nullglob
ckpts=("$RUNS"/fp32/checkpoints/epoch_*.ckpt) # the best by val/loss (save_top_k: 1)
shopt -u nullglob
ckpt=""
if ((${#ckpts[@]})); then
    ckpt=${ckpts[-1]}
else
    NOT_READY="skipped: the fp32 run left no checkpoint"
fi
run_step eval eval 120 "$RUNS/eval" "$PY" -m aelab.eval "ckpt_path=$ckpt" "${EVAL[@]}" \
    "logger=[tensorboard,csv]" "hydra.run.dir=$RUNS/eval"

# DDP before the benchmark: the benchmark is the longest step, so the budget cuts it first.
train_step ddp 90 "${DDP[@]}"
run_step benchmark benchmark 180 "$OUT" "$PY" scripts/benchmark.py "${BENCH[@]}" --models vae \
    --data-dir "$DATA" --json "$OUT/bench.json" "${EXTRA[@]}"

# The JSON: the machine, and each step with the figures it left; prints a summary and exits 0
# (every step ok), 1 (a step failed) or 3 (none failed, some skipped).
rc=0
args=("$STATE" "$OUT" "$MODE" "$BUDGET_S" "$SECONDS" "${EXTRA[@]}")
FATAL=$FATAL "$PY" - "${args[@]}" <<'EOF' 2>&1 | tee -a "$LOG" || rc=$?
import csv
import json
import math
import os
import re
import sys
from pathlib import Path

state, out, mode, budget, seconds, *overrides = sys.argv[1:]
state, out = Path(state), Path(out)
EPOCH = re.compile(r"Epoch (\d+)(?:/\d+)?: (\d+) steps in ([\d.]+) s")


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def csv_metrics(path):
    """Each metric's last logged value in a CSVLogger file (test/* are logged once, at the end)."""
    metrics = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name not in ("epoch", "step") and number(value) is not None:
                    metrics[name] = number(value)
    return metrics


def train_figures(run):
    figures = csv_metrics(run / "csv" / "metrics.csv")
    epochs = EPOCH.findall((run / "train.log").read_text())
    if epochs:
        import yaml

        batch = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
        figures["epoch_seconds"] = [float(s) for _, _, s in epochs]
        _, steps, last = epochs[-1]
        # the last epoch (the first pays for warm-up and compiling), validation included
        figures["samples_per_s"] = round(int(steps) * batch / max(float(last), 0.05), 1)
    return figures


def bench_figures(path):
    report = json.loads(path.read_text())
    figures = {}
    for row in report["results"]:
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                figures[f"{row['model']}/{row['device']}/{name}"] = value
    figures |= {f"startup_s/train.py {k}": v for k, v in report["startup_seconds"].items()}
    return figures


REQUIRED = {"train": "test/loss", "eval": "test/nll_iw"}
steps = {}
with open(state / "steps.tsv") as f:
    for line in f:
        name, kind, status, rc, start, end, run_dir, command = line.rstrip("\n").split("\t")
        step = {"command": command, "status": status, "rc": int(rc) if rc else None}
        step["seconds"] = round((int(end) - int(start)) / 1e6, 2) if start else None
        step |= {"run_dir": run_dir or None, "figures": {}}
        if status == "ran":
            try:
                if kind == "train":
                    step["figures"] = train_figures(Path(run_dir))
                elif kind == "eval":
                    step["figures"] = csv_metrics(Path(run_dir) / "csv" / "metrics.csv")
                elif kind == "benchmark":
                    step["figures"] = bench_figures(out / "bench.json")
            except Exception as err:
                step["figures_error"] = f"{type(err).__name__}: {err}"
            required = REQUIRED.get(kind)
            value = step["figures"].get(required) if required else None
            if step["rc"] != 0:
                step["status"] = f"failed: rc {step['rc']}"
            elif required and (value is None or not math.isfinite(value)):
                step["status"] = f"failed: {required} is {value}"
            elif kind == "benchmark" and not step["figures"]:
                step["status"] = "failed: bench.json has no results"
            else:
                step["status"] = "ok"
        steps[name] = step

statuses = [s["status"] for s in steps.values()]
fatal = os.environ.get("FATAL") or None
ok = not fatal and all(s == "ok" for s in statuses)
machine_json = state / "machine.json"
report = {
    "ok": ok,
    "error": fatal,
    "check": {"mode": mode, "budget_s": int(budget), "seconds": int(seconds)},
    "machine": json.loads(machine_json.read_text()) if machine_json.exists() else {},
    "steps": steps,
}
report["check"]["overrides"] = overrides
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

machine = report["machine"]
print(
    f"\ngpu_check ({mode}) on {machine.get('gpu') or machine.get('cpu')}: torch "
    f"{machine.get('torch')}, lightning {machine.get('lightning')}, {seconds} s of {budget}"
)
for name, step in steps.items():
    figures = step["figures"]
    shown = [f"{k} {figures[k]:.5g}" for k in ("test/loss", "test/nll_iw") if k in figures]
    shown += [f"{figures['samples_per_s']:,.0f} samples/s"] if "samples_per_s" in figures else []
    shown += [
        f"{k.split('/')[-1]} {v:,.0f}"
        for k, v in figures.items()
        if k.endswith(("/lightning_samples_per_s", "/bare_samples_per_s"))
    ]
    took = f"{step['seconds']:.1f} s" if step["seconds"] is not None else "-"
    print(f"  {name:16} {step['status']:24} {took:>8}  {', '.join(shown)}")
print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.log'}")
if fatal:
    print(f"error: {fatal}")
sys.exit(0 if ok else 1 if fatal or any(s.startswith("failed") for s in statuses) else 3)
EOF
exit "$rc"
