"""Training throughput of this template against the tutorials' loop and the machine's limit.

For each model and device (the CPU, and the GPU when there is one), on the same network,
optimizer, batch size and data, one run measures samples/s of

  (a) lightning  this template's training loop, exactly as `train.py` builds it (config,
                 callbacks, TensorBoard logger, progress bar), validation switched off;
  (b) tutorial   the tutorials' plain PyTorch loop: torchvision dataset with `ToTensor`,
                 `DataLoader(shuffle=True)`, images moved to the device per batch;
  (c) bare       a bare loop over an in-memory tensor shuffled with `randperm`: the compute limit;
  (d) alone      (a) without callbacks, logger, progress bar or checkpointing: the floor that
                 Lightning's own cost per step sets (a against d: what the template's
                 callbacks, logger and bar cost);
  (a') plain     (a) with `speedups=false`: plain Lightning, without aelab.speedups (a against
                 a': what the switch buys).

Run it in a terminal to time (a) as a user runs it: Rich draws the progress bar only there.

Each variant runs `--warmup` (1) epochs that are not timed, then `--epochs` (2) timed ones, and the
variants take turns for `--rounds` (4) rounds, so that a slow spell of the machine does not
fall on one variant only. (a), (c), (d) and (a'), whose ratios are the close ones, run one after
another and take turns at running first, and `--warmup` untimed epochs of (c) warm the process
up before the first round: none of them always runs first, or first in a cold process. The best
timed epoch counts (the least disturbed by other work on the machine). Prints a table with the
ratios, then, model by model, a/c in each round, the time (a) adds to each step of (c)
(Lightning's cost per step, about fixed: a/c falls as a CPU gets faster) and (d)'s speed, and
writes JSON; the JSON also keeps each variant's median epoch and the ratio a/c within each
round, which show how noisy the machine was.

For every model with a likelihood (`--models vae`, the default's first) it times `test/nll_iw`
(`--nll-iw-samples` K = 5000 importance samples, on the first `--nll-iw-images` (500) test images;
the time scales linearly to all 10,000) against (e) a bare loop computing the same bound for the
same decoder: a few images at a time, all their K samples decoded in one tensor pass. The same
seed draws the same samples in both, so their estimates must agree; the weights are as
initialised (the cost does not depend on them).

With `--folder-row DIR` it measures only the data=folder row instead: MNIST's 70k images written
as PNGs into DIR (train/ and test/, a folder per digit; once), then (a) on data=mnist (the IDX
files) and on data=folder data.source.path=DIR (its cache built before the first round, and
timed), each variant in a process of its own, taking turns for `--rounds` rounds: samples/s and
peak resident memory of each.

It also times start-up: `train.py --help` and `train.py --cfg job` (best of `--startup-runs`, 3),
which compose the config without importing torch or Lightning.

    python scripts/benchmark.py --data-dir /path/to/data
    python scripts/benchmark.py --models vae --devices cuda --json bench-gpu.json
    python scripts/benchmark.py --models vae model.latent_dim=2   # Hydra overrides last
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from aelab.config import CONFIG_DIR, prepare_hydra
from aelab.data import to_float
from aelab.data.idx_reader import read_idx
from aelab.evaluation.likelihood import ImportanceWeighted, importance_weighted_nll
from aelab.machine import cpu_name
from aelab.speedups import NVML_CHECK, skip_nvml_probe_without_cuda
from aelab.training import train

REPO = Path(__file__).resolve().parents[1]


class EpochTimer(L.Callback):
    """Samples/s of every training epoch, the device synchronised at both ends."""

    throughputs: list[float] = []  # noqa: RUF012 (the one list the benchmark reads back)

    def on_train_epoch_start(self, trainer, pl_module):
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(pl_module.device)
        seconds = time.perf_counter() - self._start
        EpochTimer.throughputs.append(len(trainer.datamodule.train_set) / seconds)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# (d): what `train.py` builds without callbacks, logger, progress bar or checkpointing
ALONE = [
    "callbacks=none",
    "logger=none",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_checkpointing=false",
    "++trainer.enable_model_summary=false",
]


def _config(
    model: str,
    args: argparse.Namespace,
    epochs: int,
    out: str,
    alone: bool = False,
    plain: bool = False,
):
    overrides = [
        f"model={model}",
        "data=mnist",
        f"paths.data_dir={args.data_dir}",
        f"paths.output_dir={out}",
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "++trainer.limit_val_batches=0",
        "test=false",
        "optimized_metric=null",
        "+callbacks.epoch_timer._target_=__main__.EpochTimer",
        *(ALONE if alone else []),
        *(["speedups=false"] if plain else []),
        *args.overrides,
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def lightning_loop(
    model: str, args: argparse.Namespace, alone: bool = False, plain: bool = False
) -> list[float]:
    """Samples/s of each timed epoch of (a), of (d) when `alone`, of (a') when `plain`."""
    EpochTimer.throughputs = []
    if plain and not torch.cuda.is_available():
        os.environ[NVML_CHECK] = "1"  # as `import lightning` leaves it, which (a') lives with
    try:
        with tempfile.TemporaryDirectory() as out:
            train(_config(model, args, args.warmup + args.epochs, out, alone, plain))
    finally:
        skip_nvml_probe_without_cuda()
    return EpochTimer.throughputs[args.warmup :]


def tutorial_loop(net: L.LightningModule, args: argparse.Namespace) -> list[float]:
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(args.data_dir, train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

    def batches():
        return ((x.to(args.device), y) for x, y in loader)

    return _epochs(net, args, batches, len(dataset))


def bare_loop(net: L.LightningModule, args: argparse.Namespace) -> list[float]:
    path = Path(args.data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images = read_idx(path).unsqueeze(1).to(args.device)

    def batches():
        order = torch.randperm(len(images), device=args.device)
        return ((to_float(images.index_select(0, i)), None) for i in order.split(args.batch_size))

    return _epochs(net, args, batches, len(images))


def _epochs(net: L.LightningModule, args: argparse.Namespace, batches, samples: int) -> list[float]:
    net = net.to(args.device).train()
    optimizer = net.configure_optimizers()
    throughputs = []
    for _ in range(args.warmup + args.epochs):
        _sync(args.device)
        start = time.perf_counter()
        for x, _ in batches():
            loss = net.loss_terms(x, x)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(args.device)
        throughputs.append(samples / (time.perf_counter() - start))
    return throughputs[args.warmup :]


def measure(model: str, args: argparse.Namespace) -> dict:
    """One table row: the three loops taking turns for `args.rounds` rounds on `args.device`."""
    cfg = _config(model, args, epochs=1, out=".")
    net = instantiate(cfg.model, image_shape=[1, 28, 28], _convert_="all")
    loops = {
        "lightning": partial(lightning_loop, model, args),
        "bare": partial(bare_loop, net, args),
        "lightning_alone": partial(lightning_loop, model, args, alone=True),
        "plain": partial(lightning_loop, model, args, plain=True),
        "tutorial": partial(tutorial_loop, net, args),
    }
    # Untimed epochs first, so that the loop that runs first does not find the process cold.
    bare_loop(net, argparse.Namespace(**{**vars(args), "epochs": 0}))
    close = ["lightning", "bare", "lightning_alone", "plain"]  # each runs first in turn
    orders = [[*close[i:], *close[:i], "tutorial"] for i in range(len(close))]
    rounds = [{name: loops[name]() for name in orders[i % len(orders)]} for i in range(args.rounds)]
    row = {"model": model, "device": args.device, "batch_size": args.batch_size}
    for name in loops:
        epochs = [speed for r in rounds for speed in r[name]]
        row[f"{name}_samples_per_s"] = max(epochs)
        row[f"{name}_median_samples_per_s"] = statistics.median(epochs)
    row["lightning_vs_bare_per_round"] = [max(r["lightning"]) / max(r["bare"]) for r in rounds]
    row["first_per_round"] = [next(iter(r)) for r in rounds]
    row["lightning_vs_bare"] = row["lightning_samples_per_s"] / row["bare_samples_per_s"]
    row["lightning_vs_tutorial"] = row["lightning_samples_per_s"] / row["tutorial_samples_per_s"]
    row["alone_vs_bare"] = row["lightning_alone_samples_per_s"] / row["bare_samples_per_s"]
    row["speedups_gain"] = row["lightning_samples_per_s"] / row["plain_samples_per_s"]
    # what (a) adds to a step of (c): Lightning's fixed cost, which a/c sets against the compute;
    # and what (a) adds to a step of (d): the cost of the template's callbacks, logger and bar
    ms_per_step = {name: 1e3 * args.batch_size / row[f"{name}_samples_per_s"] for name in loops}
    row["lightning_extra_ms_per_step"] = ms_per_step["lightning"] - ms_per_step["bare"]
    row["template_extra_ms_per_step"] = ms_per_step["lightning"] - ms_per_step["lightning_alone"]
    return row


@torch.inference_mode()
def bare_nll_iw(vae: L.LightningModule, images: torch.Tensor, samples: int) -> float:
    """(e): -log p(x) with K = `samples`, written out for the Gaussian encoder and Bernoulli
    decoder of model=vae, a few images at a time (at most 8192 decoded images per pass)."""
    vae.eval()
    total = 0.0
    for batch in images.split(max(1, 8192 // samples)):
        x = to_float(batch.to(vae.device)).flatten(1)
        h = vae.net.encoder(x.view(-1, *batch.shape[1:]))
        mu, logvar = vae.mu(h), vae.logvar(h)
        eps = torch.randn(samples, *mu.shape, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = vae.net.decoder(z.flatten(0, 1)).view(samples, len(x), -1)
        log_px_z = (logits * x).sum(-1) - F.softplus(logits).sum(-1)
        log_pz_over_qz = -0.5 * z.pow(2).sum(-1) + 0.5 * (eps.pow(2) + logvar).sum(-1)
        log_w = log_px_z + log_pz_over_qz
        total -= (torch.logsumexp(log_w, dim=0) - math.log(samples)).sum().item()
    return total / len(images)


def nll_iw_row(model: str, vae: L.LightningModule, args: argparse.Namespace) -> dict:
    """aelab's test/nll_iw against (e), taking turns for `args.rounds` rounds: best seconds."""
    path = Path(args.data_dir) / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images = read_idx(path)[: args.nll_iw_images].unsqueeze(1)
    vae = vae.to(args.device)
    loops = {
        "aelab": partial(importance_weighted_nll, vae, images, args.nll_iw_samples),
        "bare": partial(bare_nll_iw, vae, images, args.nll_iw_samples),
    }
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    nll: dict[str, float] = {}
    for i in range(args.rounds):
        for name in list(loops)[:: 1 if i % 2 == 0 else -1]:
            torch.manual_seed(i)
            _sync(args.device)
            start = time.perf_counter()
            nll[name] = loops[name]()
            _sync(args.device)
            seconds[name].append(time.perf_counter() - start)
    row = {"model": model, "device": args.device, "images": len(images)}
    row |= {"samples": args.nll_iw_samples, "aelab_nll": nll["aelab"], "bare_nll": nll["bare"]}
    row |= {f"{name}_seconds": min(times) for name, times in seconds.items()}
    row |= {f"{name}_seconds_per_round": times for name, times in seconds.items()}
    row["aelab_vs_bare"] = row["aelab_seconds"] / row["bare_seconds"]
    return row


def startup_seconds(args: list[str], runs: int) -> float:
    """Best wall time of `python train.py ARGS`, interpreter start included."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "train.py", *args], cwd=REPO, check=True, capture_output=True
        )
        times.append(time.perf_counter() - start)
    return min(times)


def write_mnist_pngs(data_dir: str, folder: Path) -> float:
    """MNIST's training and test images as PNGs in ImageFolder's layout; seconds taken."""
    from PIL import Image

    start = time.perf_counter()
    raw = Path(data_dir) / "MNIST" / "raw"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(raw / f"{prefix}-images-idx3-ubyte").numpy()
        labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte").tolist()
        for digit in range(10):
            (folder / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(folder / split / str(label) / f"{i:05d}.png")
    return time.perf_counter() - start


def folder_variant(args: argparse.Namespace) -> None:
    """In a process of its own: (a)'s timed epochs on one variant, and the peak RSS, as JSON."""
    import resource

    data = ["data=folder", f"data.source.path={args.folder_row}", "data.val_size=5000"]
    args.overrides = [*(data if args.folder_variant == "folder" else []), *args.overrides]
    throughputs = lightning_loop(args.models[0], args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"samples_per_s": throughputs, "peak_rss_bytes": peak}))


def folder_row(args: argparse.Namespace) -> None:
    """data=mnist (IDX) against data=folder on the same 70k images, as PNGs (`--folder-row`)."""
    folder = Path(args.folder_row)
    written = None if (folder / "test").is_dir() else write_mnist_pngs(args.data_dir, folder)
    from aelab.data import ImageDataModule

    start = time.perf_counter()
    ImageDataModule("folder", args.data_dir, path=str(folder), val_size=5000).prepare_data()
    cache_seconds = time.perf_counter() - start
    command = [sys.executable, __file__, "--data-dir", args.data_dir, "--folder-row", str(folder)]
    command += ["--models", args.models[0], "--warmup", str(args.warmup)]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    results: dict[str, dict] = {"idx": {"epochs": []}, "folder": {"epochs": []}}
    for turn in range(args.rounds):
        for variant in ("idx", "folder")[:: 1 if turn % 2 == 0 else -1]:
            run = subprocess.run(
                [*command, "--folder-variant", variant, *args.overrides],
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(run.stdout.strip().splitlines()[-1])
            results[variant]["epochs"] += measured["samples_per_s"]
            results[variant]["peak_rss_bytes"] = max(
                measured["peak_rss_bytes"], results[variant].get("peak_rss_bytes", 0)
            )
    for result in results.values():
        result["best_samples_per_s"] = max(result["epochs"])
    ratio = results["folder"]["best_samples_per_s"] / results["idx"]["best_samples_per_s"]
    console = Console()
    for variant, result in results.items():
        console.print(
            f"{args.models[0]} data={'mnist' if variant == 'idx' else 'folder'}: best "
            f"{result['best_samples_per_s']:,.0f} samples/s, peak RSS "
            f"{result['peak_rss_bytes'] / 2**20:,.0f} MiB"
        )
    pngs = f"PNGs written in {written:.0f} s; " if written else ""
    console.print(
        f"folder/idx: {ratio:.3f}; {pngs}prepare_data (builds or checks the cache) in "
        f"{cache_seconds:.1f} s"
    )
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    report = {"machine": machine, "torch": torch.__version__, "results": results}
    report |= {"folder_vs_idx": ratio, "png_seconds": written, "cache_seconds": cache_seconds}
    Path(args.json).write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vae", "ae", "deep_ae"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--nll-iw-images", type=int, default=500, help="0 skips the nll_iw row")
    parser.add_argument("--nll-iw-samples", type=int, default=5000)
    parser.add_argument("--json", default="benchmark.json")
    parser.add_argument("--folder-row", help="only the data=folder row, with its PNGs in this DIR")
    parser.add_argument("--folder-variant", choices=["idx", "folder"], help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every loop's model and (a)'s run"
    )
    args = parser.parse_args()
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no CUDA device on this machine")
    prepare_hydra()
    skip_nvml_probe_without_cuda()  # as train.py does, for every loop from the first
    if args.folder_row:
        args.device = args.devices[0]
        return folder_variant(args) if args.folder_variant else folder_row(args)

    results = [
        measure(model, argparse.Namespace(**vars(args), device=device))
        for device in args.devices
        for model in args.models
    ]
    table = Table(title=f"Training throughput, samples/s (batch {args.batch_size})")
    columns = ("model", "device", "(a) lightning", "(a') plain", "(b) tutorial", "(c) bare")
    for column in (*columns, "a/c", "a/b", "a/a'"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["model"],
            r["device"],
            f"{r['lightning_samples_per_s']:,.0f}",
            f"{r['plain_samples_per_s']:,.0f}",
            f"{r['tutorial_samples_per_s']:,.0f}",
            f"{r['bare_samples_per_s']:,.0f}",
            f"{r['lightning_vs_bare']:.2f}x",
            f"{r['lightning_vs_tutorial']:.2f}x",
            f"{r['speedups_gain']:.2f}x",
        )
    console = Console()
    console.print(table)
    for r in results:
        by_round = " ".join(f"{ratio:.2f}x" for ratio in r["lightning_vs_bare_per_round"])
        extra = f"(a) adds {r['lightning_extra_ms_per_step']:.2f} ms to each step of (c)"
        alone = (
            f"(d) Lightning alone: {r['lightning_alone_samples_per_s']:,.0f} samples/s, "
            f"{r['alone_vs_bare']:.2f}x (c); (a) adds "
            f"{r['template_extra_ms_per_step']:.2f} ms to each step of (d)"
        )
        console.print(
            f"{r['model']} ({r['device']}): a/c in each round {by_round}; {extra}; {alone}",
            soft_wrap=True,
        )
    likelihoods = []
    for device in args.devices if args.nll_iw_images > 0 else []:
        for model in args.models:
            cfg = _config(model, argparse.Namespace(**vars(args), device=device), 1, ".")
            vae = instantiate(cfg.model, image_shape=[1, 28, 28], _convert_="all")
            if isinstance(vae, ImportanceWeighted):
                likelihoods.append(
                    nll_iw_row(model, vae, argparse.Namespace(**vars(args), device=device))
                )
    for r in likelihoods:
        per_10k = 10_000 / r["images"]
        console.print(
            f"test/nll_iw {r['model']} ({r['device']}), K={r['samples']} on {r['images']} test "
            f"images: aelab {r['aelab_seconds']:.1f} s, (e) bare {r['bare_seconds']:.1f} s, "
            f"{r['aelab_vs_bare']:.2f}x (10,000 images: {r['aelab_seconds'] * per_10k / 60:.1f} "
            f"against {r['bare_seconds'] * per_10k / 60:.1f} min); estimates "
            f"{r['aelab_nll']:.2f} and {r['bare_nll']:.2f} nats",
            soft_wrap=True,
        )
    startup = {
        " ".join(flags): startup_seconds(flags, args.startup_runs)
        for flags in (["--help"], ["--cfg", "job"])
    }
    timings = ", ".join(f"train.py {flags}: {seconds:.2f} s" for flags, seconds in startup.items())
    console.print(f"Start-up (best of {args.startup_runs}): {timings}")
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if "cuda" in args.devices:
        machine += f"; {torch.cuda.get_device_name()}"
    console.print(f"Machine: {machine}; torch {torch.__version__}", soft_wrap=True)
    meta = {
        "torch": torch.__version__,
        "rounds": args.rounds,
        "timed_epochs_per_round": args.epochs,
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if "cuda" in args.devices else None,
    }
    report = {"meta": meta, "results": results, "nll_iw": likelihoods, "startup_seconds": startup}
    Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
