"""Distributed training on CPU processes, torch.compile, bf16 mixed precision, per-step costs."""

import importlib.util
import json
import math
import os
import sys
from datetime import timedelta
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
from conftest import (
    REPO,
    VAL_SIZE,
    free_port,
    mnist_source,
    run_python,
    run_train,
    short_run,
    small_run_overrides,
)
from lightning.pytorch.callbacks import RichProgressBar

from aelab.callbacks import DivergenceGuard, ProgressBar
from aelab.data import ImageDataModule
from aelab.data.batches import BatchIndices
from aelab.errors import TrainingDiverged
from aelab.models import VAE, Autoencoder

MLP32 = {"_target_": "aelab.nets.MLP", "hidden_dims": [32]}


# Process groups on 127.0.0.1, one test at a time (one xdist worker): two at once raced for
# ports (a free port handed out by one, taken by the other's gloo pair: "Connection closed by
# peer" in CI)
DISTRIBUTED = pytest.mark.xdist_group("distributed")


def _write_shard(rank: int, world: int, folder) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the two processes meet on the loopback device
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    for epoch in (0, 1):
        sampler = BatchIndices(1003, 32, shuffle=True, seed=7, epoch=lambda e=epoch: e)
        torch.save(torch.cat(list(sampler)), folder / f"epoch{epoch}_rank{rank}.pt")
    dist.destroy_process_group()


@DISTRIBUTED
def test_ranks_draw_disjoint_shards_under_torch_distributed(tmp_path):
    torch.multiprocessing.spawn(_write_shard, args=(2, tmp_path), nprocs=2)
    for epoch in (0, 1):
        shards = [torch.load(tmp_path / f"epoch{epoch}_rank{r}.pt").tolist() for r in range(2)]
        assert len(shards[0]) == len(shards[1]) == 501
        assert set(shards[0]).isdisjoint(shards[1])
        assert len(set(shards[0]) | set(shards[1])) == 1002
    first = torch.load(tmp_path / "epoch0_rank0.pt")
    assert not torch.equal(first, torch.load(tmp_path / "epoch1_rank0.pt"))


@pytest.mark.slow
@DISTRIBUTED
def test_ddp_cpu_trains_two_processes_into_one_run_folder(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(
        "trainer=ddp_cpu",
        "model=vae",
        "trainer.max_epochs=2",
        *small_run_overrides(data_dir),
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training on cpu, process 2 of 2, precision 32-true" in result.stdout + result.stderr
    assert not list(tmp_path.glob("run?*")), "one output folder, not one per rank"
    assert len(list((run_dir / "tensorboard").glob("events.*"))) >= 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.sample(2).shape == (2, 1, 28, 28)


class _DivergesOnRankOne(VAE):
    """A VAE whose loss turns NaN on rank 1 only, at step `nan_step`: a divergence that one rank
    sees first (its shard of the data, say), as happens in real runs."""

    nan_step: int | None = None

    def loss_terms(self, x, target):
        terms = super().loss_terms(x, target)
        if self.training and self.global_rank == 1 and self.global_step == self.nan_step:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


class _LocalLosses(L.Callback):
    """Each step's training loss as this rank computed it, before any reduction."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _ddp_rank(rank: int, port: int, data_dir, folder) -> None:
    """One of two CPU ranks, launched as torchrun would (environment variables), fitting
    first a healthy run, then one that diverges on rank 1 at step 2."""
    os.environ |= {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
        "LOCAL_RANK": str(rank),
        "RANK": str(rank),
    }
    report = {}
    for nan_step in (None, 2):
        model = _DivergesOnRankOne(
            (1, 28, 28), latent_dim=4, net=MLP32, optimizer=partial(torch.optim.Adam)
        )
        model.nan_step = nan_step
        local = _LocalLosses()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=L.pytorch.strategies.DDPStrategy(timeout=timedelta(seconds=60)),
            max_epochs=1,
            limit_train_batches=4,
            limit_val_batches=0,
            log_every_n_steps=1,
            callbacks=[local, DivergenceGuard()],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
        dm = ImageDataModule(mnist_source(data_dir), batch_size=32, val_size=128)
        try:
            trainer.fit(model, dm)
            outcome = "finished"
        except TrainingDiverged:
            outcome = f"diverged at step {trainer.global_step}"
        logged = float(trainer.callback_metrics.get("train/loss", float("nan")))
        report[str(nan_step)] = {"outcome": outcome, "local": local.losses, "logged": logged}
    (folder / f"rank{rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
@DISTRIBUTED
def test_ddp_reduces_training_metrics_and_stops_every_rank_on_divergence(data_dir, tmp_path):
    port = free_port()
    torch.multiprocessing.spawn(_ddp_rank, args=(port, data_dir, tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    healthy = [r["None"] for r in ranks]
    assert [r["outcome"] for r in healthy] == ["finished", "finished"]
    last = [r["local"][-1] for r in healthy]
    assert last[0] != pytest.approx(last[1]), "each rank trains on its own shard"
    assert healthy[0]["logged"] == healthy[1]["logged"] == pytest.approx(sum(last) / 2)
    diverged = [r["2"] for r in ranks]
    assert [r["outcome"] for r in diverged] == ["diverged at step 3"] * 2, "all ranks stop"
    assert all(map(math.isfinite, diverged[0]["local"])), "rank 0's own loss stayed finite"


def _fit(model: L.LightningModule, data_dir, batch_size: int = 64, **trainer_kwargs) -> L.Trainer:
    """One short epoch on the synthetic MNIST; `trainer_kwargs` override the defaults."""
    dm = ImageDataModule(mnist_source(data_dir), batch_size=batch_size, val_size=128)
    defaults = {
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "enable_progress_bar": False,
    }
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        **(defaults | trainer_kwargs),
    )
    trainer.fit(model, dm)
    return trainer


@pytest.mark.slow
def test_compile_trains_on_cpu(data_dir):
    torch._dynamo.reset()
    optimizer = partial(torch.optim.Adam, lr=1e-3)
    model = Autoencoder((1, 28, 28), latent_dim=8, net=MLP32, optimizer=optimizer, compile=True)
    trainer = _fit(model, data_dir)
    assert model.net._compiled_call_impl is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert not any("_orig_mod" in key for key in model.state_dict())


def test_bf16_mixed_trains_on_cpu(data_dir):
    model = VAE((1, 28, 28), latent_dim=4, net=MLP32, optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = _fit(model, data_dir, precision="bf16-mixed")
    assert trainer.precision == "bf16-mixed"
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def _fit_tiny_vae_with_bar(bar: ProgressBar, data_dir, tmp_path, **trainer_kwargs):
    """A 784-32-4 VAE fitted on the synthetic MNIST with `bar` as its progress bar."""
    model = VAE((1, 28, 28), latent_dim=4, net=MLP32, optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = _fit(
        model,
        data_dir,
        enable_progress_bar=True,
        callbacks=[bar],
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    return trainer, model


def test_progress_bar_reads_metrics_only_when_it_redraws(data_dir, tmp_path, monkeypatch):
    shown = []
    redraw = RichProgressBar.on_train_batch_end

    def counting(self, trainer, pl_module, outputs, batch, batch_idx):
        shown.append(batch_idx)
        redraw(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", counting)
    bar = ProgressBar(refresh_rate=1)
    trainer, model = _fit_tiny_vae_with_bar(
        bar,
        data_dir,
        tmp_path,
        batch_size=16,
        limit_train_batches=30,
        limit_val_batches=0,
        log_every_n_steps=5,
    )
    # one redraw a second: the first step, the epoch's last, and not every step in between
    assert shown[0] == 0 and shown[-1] == 29
    assert len(shown) < 30 // 2
    # the training metrics are not Lightning progress-bar metrics, and the bar shows them
    assert not any(name.startswith("train/") for name in trainer.progress_bar_metrics)
    metrics = bar.get_metrics(trainer, model)
    assert {"train/loss", "train/recon", "train/kl"} <= metrics.keys()
    assert metrics["train/loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_logs_a_line_per_epoch_where_it_cannot_draw(
    terminal, data_dir, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    bar = ProgressBar(console_kwargs={"force_terminal": terminal})
    with caplog.at_level("INFO", logger="aelab.callbacks.progress"):
        trainer, _ = _fit_tiny_vae_with_bar(
            bar,
            data_dir,
            tmp_path,
            max_epochs=3,
            limit_train_batches=3,
            log_every_n_steps=1,
            check_val_every_n_epoch=2,
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "aelab.callbacks.progress"]
    if terminal:  # the bar shows it all, its epochs counted from 1 as the log lines are
        assert lines == []
        assert bar.progress.tasks[bar.train_progress_bar_id].description.strip() == "Epoch 3/3"
        return
    assert [line.split(" steps in ")[0] for line in lines] == [
        "Epoch 1/3: 3",
        "Epoch 2/3: 3",
        "Epoch 3/3: 3",
    ]
    # epochs 0 and 2 did not validate: no val/ values (not the sanity check's, not epoch 1's)
    assert all("train/loss " in line for line in lines)
    assert "val/" not in lines[0] and "val/" not in lines[2]
    val_loss = float(trainer.callback_metrics["val/loss"])  # epoch 1's, the last validation
    assert f"val/loss {val_loss:.5g}" in lines[1]
    assert f"train/loss {float(trainer.callback_metrics['train/loss']):.5g}" in lines[2]


class _HostReads(L.Callback):
    """Counts reads of tensor values by the host (`.item()`, `bool(t)`, ...) in each training and
    validation step, from its `on_*_batch_start` to the next hook that starts or ends a step or
    an epoch: on a GPU each read would stall for a sync."""

    READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: dict[str, list[int]] = {"train": [], "val": []}
        self.counting: list[int] | None = None
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, read):
        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            # the optimizers' step counters live on the host even when training on a GPU
            if self.counting is not None and not caller.startswith("torch.optim"):
                self.counting[-1] += 1
            return read(tensor, *args, **kwargs)

        return counted

    def _start(self, stage: str) -> None:
        self.counting = self.steps[stage]
        self.counting.append(0)

    def _stop(self, *args) -> None:
        self.counting = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start("train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, *args) -> None:
        self._start("val")

    on_validation_start = on_validation_epoch_end = on_train_epoch_end = _stop


def test_training_reads_values_back_only_on_logging_steps(
    compose_cfg, data_dir, tmp_path, monkeypatch
):
    """The promise behind GPU throughput: no host sync per step, only every
    `trainer.log_every_n_steps` steps (logging, the divergence check) and at an epoch's end."""
    model, datamodule, trainer = short_run(
        compose_cfg,
        data_dir,
        tmp_path,
        "trainer.log_every_n_steps=4",
        "trainer.max_epochs=2",
        "++trainer.limit_train_batches=6",
        "++trainer.limit_val_batches=3",
        # the bar reads values when it redraws, by the clock (test_progress_bar_...)
        "~callbacks.progress_bar",
        "++trainer.enable_progress_bar=false",
    )
    probe = _HostReads(monkeypatch)
    trainer.callbacks.insert(0, probe)  # first: its windows close before the epoch-end work
    trainer.fit(model, datamodule=datamodule)

    train, val = probe.steps["train"], probe.steps["val"]
    assert len(train) == trainer.global_step == 12 and len(val) == 6
    # steps 4 and 8 log; 6 and 12 end an epoch (the divergence check)
    reading = {3, 5, 7, 11}
    assert all(train[i] == 0 for i in range(12) if i not in reading), train
    assert all(train[i] > 0 for i in reading), train
    # a validation's last window also holds Lightning's epoch-end metrics (val/loss, ...)
    assert [val[i] for i in (0, 1, 3, 4)] == [0] * 4, val


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


def _torchrun(*args: str, log_dir, data_dir, extra=(), timeout=600):
    """`torchrun ARGS train.py ...` (as `python -m torch.distributed.run`), without a run folder
    given: the processes must agree on one themselves."""
    import subprocess

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *args,
        "train.py",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        *small_run_overrides(data_dir),
        f"paths.log_dir={log_dir}",
        "callbacks.progress_bar=null",
        *extra,
    ]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _one_run_folder(log_dir):
    (run,) = (log_dir / "train" / "runs").iterdir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]
    # every event file is rank 0's: events.out.tfevents.<time>.<host>.<pid>.<n>
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").glob("events.*")}
    assert len(writers) == 1, writers
    return run


@pytest.mark.slow
@DISTRIBUTED
def test_torchrun_two_processes_train_into_one_run_folder(data_dir, tmp_path):
    process = _torchrun("--nproc-per-node", "2", log_dir=tmp_path / "logs", data_dir=data_dir)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    assert "process 1 of 2" in output and "process 2 of 2" in output
    _one_run_folder(tmp_path / "logs")


@pytest.mark.slow
@DISTRIBUTED
def test_two_torchrun_nodes_train_into_one_run_folder(data_dir, tmp_path):
    port = free_port()
    nodes = [
        _torchrun(
            *("--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1"),
            *("--master-addr", "127.0.0.1", "--master-port", str(port)),
            log_dir=tmp_path / "logs",
            data_dir=data_dir,
            extra=["trainer.devices=1", "trainer.num_nodes=2"],
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    assert "Training on cpu, process 2 of 2" in outputs[1]  # the second node's process
    _one_run_folder(tmp_path / "logs")


@DISTRIBUTED
def test_torchrun_processes_take_rank_zeros_run_stamp(monkeypatch):
    """Processes that compose their config in different seconds still name one folder."""
    from aelab import config

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    stamps = []
    for rank, now in [("0", "2026-01-01_00-00-00"), ("1", "2026-01-01_00-00-07")]:
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setattr(config.time, "strftime", lambda fmt, now=now: now)
        config.run_stamp.cache_clear()
        stamps.append(config.run_stamp())
    config.run_stamp.cache_clear()
    assert stamps == ["2026-01-01_00-00-00"] * 2


def test_only_local_rank_zero_fetches_the_data(tmp_path, monkeypatch):
    """The node's other processes wait for complete files and never download or repair them."""
    from conftest import write_dataset

    from aelab.training import fetch_data

    dm = ImageDataModule(mnist_source(tmp_path), val_size=128)
    monkeypatch.setattr(ImageDataModule, "prepare_data", lambda self: pytest.fail("fetched"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    waits = []

    def sleep(seconds):  # rank 0 finishes the download while this rank waits
        waits.append(seconds)
        write_dataset(tmp_path / "MNIST" / "raw")

    monkeypatch.setattr("aelab.data.datamodule.time.sleep", sleep)
    fetch_data(dm)
    assert len(waits) == 1 and dm.image_shape == (1, 28, 28)


@pytest.mark.slow
@DISTRIBUTED
def test_three_ranks_test_every_image_exactly_once(data_dir, tmp_path):
    """The same weights tested by 1 and by 3 processes give the same test/loss: 128 test images
    do not split evenly in 3, and none may be left out or counted twice."""
    base = [
        "model=ae",
        *small_run_overrides(data_dir),
        "logger=csv",
        "callbacks.progress_bar=null",
    ]
    trained = run_train(*base, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'trained'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    weights = tmp_path / "trained" / "checkpoints" / "last.ckpt"
    losses = {}
    for devices in (1, 3):
        run = tmp_path / f"tested_on_{devices}"
        result = run_train(
            *base,
            "trainer=ddp_cpu",
            f"trainer.devices={devices}",
            f"init_from={weights}",
            "++trainer.limit_train_batches=0",  # no training: test the weights as they are
            "optimized_metric=null",
            f"hydra.run.dir={run}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = (run / "csv" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        (row,) = [r.split(",") for r in rows[1:] if r.split(",")[header.index("test/loss")]]
        losses[devices] = float(row[header.index("test/loss")])
    assert losses[3] == pytest.approx(losses[1], rel=1e-5)


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
