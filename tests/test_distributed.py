"""Distributed training on CPU processes: DDP and torchrun (one node and two), shards, the run
folder the ranks share, metrics reduced over ranks, every test image tested once."""

import json
import math
import os
import sys
from datetime import timedelta
from functools import partial

import lightning as L
import pytest
import torch
import torch.distributed as dist
from conftest import (
    MLP32,
    REPO,
    free_port,
    mnist_source,
    offline_env,
    read_events,
    run_train,
    small_run_overrides,
)

from aelab.callbacks import DivergenceGuard
from aelab.data import ImageDataModule
from aelab.data.batches import BatchIndices
from aelab.errors import TrainingDiverged
from aelab.models import VAE

TINY_SHAPES = {"size": 16, "scales": 2, "orientations": 3, "positions": 4}  # 288 images


def _write_shard(rank: int, world: int, folder) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the two processes meet on the loopback device
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    for epoch in (0, 1):
        sampler = BatchIndices(1003, 32, shuffle=True, seed=7, epoch=lambda e=epoch: e)
        torch.save(torch.cat(list(sampler)), folder / f"epoch{epoch}_rank{rank}.pt")
    dist.destroy_process_group()


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
def test_ddp_cpu_trains_two_processes_into_one_run_folder(tmp_path):
    """On data with ground-truth factors, so that the disentanglement callback runs under DDP
    too: rank 0 alone computes and logs its metrics and pictures, the other rank waits for
    nothing it does not join."""
    run_dir = tmp_path / "run"
    tiny = [f"data.source.{key}={value}" for key, value in TINY_SHAPES.items()]
    result = run_train(
        "trainer=ddp_cpu",
        "model=vae",
        "model.latent_dim=4",
        "data=shapes",
        *tiny,
        "data.batch_size=32",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training on cpu, process 2 of 2, precision 32-true" in result.stdout + result.stderr
    assert not list(tmp_path.glob("run?*")), "one output folder, not one per rank"
    writers = {p.name.split(".")[4] for p in (run_dir / "tensorboard").glob("events.*")}
    assert len(writers) == 1, f"rank 0 writes alone, not the processes {writers}"
    events = read_events(run_dir / "tensorboard")
    assert len(events.Scalars("val/mig")) == 2  # once an epoch, from rank 0
    assert {"val/factor_traversal", "val/mutual_information"} <= set(events.Tags()["images"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.sample(2).shape == (2, 1, TINY_SHAPES["size"], TINY_SHAPES["size"])


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
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=offline_env(),
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
def test_torchrun_two_processes_train_into_one_run_folder(data_dir, tmp_path):
    process = _torchrun(
        *("--nproc-per-node", "2", "--master-port", str(free_port())),
        log_dir=tmp_path / "logs",
        data_dir=data_dir,
    )
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    assert "process 1 of 2" in output and "process 2 of 2" in output
    _one_run_folder(tmp_path / "logs")


@pytest.mark.slow
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

    monkeypatch.setattr("aelab.data.placement.time.sleep", sleep)
    fetch_data(dm)
    assert len(waits) == 1 and dm.image_shape == (1, 28, 28)


@pytest.mark.slow
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
