"""aelab.speedups: each workaround of Lightning's per-step costs still works with the installed
Lightning (a test fails loudly when an upgrade changes what it relies on), and
`speedups=false` trains as plain Lightning does; torch.compile and bf16 mixed precision train on
the CPU; values are read back to the host only on logging steps."""

import os
import re
import sys
from contextlib import nullcontext
from functools import partial

import lightning as L
import pytest
import torch
from conftest import MLP32, quick_fit, short_run, small_run_overrides
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

from aelab.models import VAE, Autoencoder
from aelab.speedups import (
    BATCH_HOOKS,
    HOOK_NAME_ATTRIBUTE,
    NVML_CHECK,
    NoProfiler,
    skip_hook_name_checks,
    skip_nvml_probe_without_cuda,
)
from aelab.training import make_trainer


def test_trainer_profiles_for_free_unless_asked(compose_cfg, data_dir, tmp_path):
    overrides = [*small_run_overrides(data_dir), "logger=none"]
    trainer = make_trainer(compose_cfg(*overrides, output_dir=tmp_path), loggers=[])
    assert isinstance(trainer.profiler, NoProfiler)
    # one shared no-op context for every hook call, not a generator built per call
    assert trainer.profiler.profile("on_train_batch_start") is trainer.profiler.profile("x")
    asked = compose_cfg(*overrides, "trainer.profiler=simple", output_dir=tmp_path)
    assert isinstance(make_trainer(asked, loggers=[]).profiler, SimpleProfiler)


def test_callbacks_are_called_at_batches_only_for_hooks_they_define(
    compose_cfg, data_dir, tmp_path, monkeypatch
):
    """Lightning labels every callback hook it calls for the profiler: the labels of a short
    fit show which per-batch hooks it still calls."""
    labels = []
    monkeypatch.setattr(
        NoProfiler, "profile", lambda self, name: labels.append(name) or nullcontext()
    )
    model, datamodule, trainer = short_run(
        compose_cfg,
        data_dir,
        tmp_path,
        "logger=none",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=3",
        "++trainer.limit_val_batches=2",
    )
    trainer.fit(model, datamodule=datamodule)

    by_name = {type(callback).__name__: type(callback) for callback in trainer.callbacks}
    assert {"DivergenceGuard", "ImageGrids", "ModelCheckpoint", "ProgressBar"} <= set(by_name)
    called = [re.fullmatch(r"\[Callback\](\w+).*\.(\w+)", label) for label in labels]
    at_batches = [m.groups() for m in called if m and m[2] in BATCH_HOOKS]
    defined = {
        (name, hook)
        for name, cls in by_name.items()
        for hook in BATCH_HOOKS
        if getattr(cls, hook) is not getattr(L.Callback, hook)
    }
    assert set(at_batches) <= defined, set(at_batches) - defined
    assert at_batches.count(("DivergenceGuard", "on_train_batch_end")) == 3
    assert at_batches.count(("ModelCheckpoint", "on_train_batch_end")) == 3
    assert at_batches.count(("LastCheckpoint", "on_train_batch_end")) == 3
    # the other four training-step hooks are defined by none of them, and no longer called
    assert {hook for _, hook in at_batches} & set(BATCH_HOOKS[1:5]) == set()


class _HookNames(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.seen = pl_module._current_fx_name


def test_lightning_names_each_hook_without_module_attribute_checks(data_dir, monkeypatch):
    """Lightning stores the running hook's name on the module around every hook call (and
    `self.log` checks it); our modules store it directly, not through nn.Module.__setattr__."""
    checked = []
    module_setattr = torch.nn.Module.__setattr__

    def counting_setattr(module, name, value):
        checked.append(name)
        module_setattr(module, name, value)

    model = VAE((1, 28, 28), latent_dim=4, net=MLP32, optimizer=torch.optim.Adam)
    skip_hook_name_checks(model)
    assert type(model).__name__ == "VAE" and isinstance(model, VAE)
    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting_setattr)
    names = _HookNames()
    trainer = quick_fit(model, data_dir, callbacks=[names])
    assert names.seen == "on_train_batch_start"
    assert "val/loss" in trainer.callback_metrics  # `self.log` still knows where it is called
    assert HOOK_NAME_ATTRIBUTE not in checked
    model.extra = torch.nn.Linear(2, 2)  # other attributes still go through nn.Module
    assert checked[-1] == "extra" and "extra" in model._modules


@pytest.mark.skipif(torch.cuda.is_available(), reason="the probe is kept where there is CUDA")
def test_adam_steps_without_probing_for_nvml_where_there_is_no_cuda(monkeypatch):
    monkeypatch.setenv(NVML_CHECK, "1")  # as `import lightning` leaves it
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    probes = []
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: probes.append(1) or -1)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.ones(3)
    optimizer = torch.optim.Adam([param])
    optimizer.step()
    assert probes  # what every step cost before
    skip_nvml_probe_without_cuda()  # probes once
    probes.clear()
    optimizer.step()
    assert not probes and NVML_CHECK not in os.environ


def test_speedups_false_trains_as_plain_lightning(compose_cfg, data_dir, tmp_path):
    model, datamodule, trainer = short_run(
        compose_cfg,
        data_dir,
        tmp_path,
        "speedups=false",
        "logger=none",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
    )
    assert type(trainer.profiler) is PassThroughProfiler
    assert type(model) is VAE and "__setattr__" not in vars(type(model))
    assert all(callable(getattr(c, hook)) for c in trainer.callbacks for hook in BATCH_HOOKS)
    trainer.fit(model, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


@pytest.mark.slow
def test_compile_trains_on_cpu(data_dir):
    torch._dynamo.reset()
    optimizer = partial(torch.optim.Adam, lr=1e-3)
    model = Autoencoder((1, 28, 28), latent_dim=8, net=MLP32, optimizer=optimizer, compile=True)
    trainer = quick_fit(model, data_dir)
    assert model.net._compiled_call_impl is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert not any("_orig_mod" in key for key in model.state_dict())


def test_bf16_mixed_trains_on_cpu(data_dir):
    model = VAE((1, 28, 28), latent_dim=4, net=MLP32, optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = quick_fit(model, data_dir, precision="bf16-mixed")
    assert trainer.precision == "bf16-mixed"
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


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
