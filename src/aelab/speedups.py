"""The one place where aelab relies on Lightning's internals: the workarounds of its per-step
costs (`speedups=true`), and the batch count that exact mid-epoch resume needs (always).

Each speed-up spares a cost that Lightning's public API offers no way around and that measured
worth having on a CPU (docs/benchmarks.md has the figures); `speedups=false` trains as plain
Lightning does, and `scripts/benchmark.py` times both. Each relies on something Lightning does
internally, and tests/test_speedups.py fails loudly when an upgrade changes it; so do the
mid-epoch resume tests (tests/test_faults.py, tests/test_reliability.py) for `trained_batches`.
"""

import os
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any

import lightning as L
from lightning.pytorch.profilers import PassThroughProfiler

# The hooks Lightning calls on every callback at every batch, each through its callback
# dispatcher, whose return values it ignores.
BATCH_HOOKS = (
    "on_train_batch_start",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)
HOOK_NAME_ATTRIBUTE = "_current_fx_name"  # set by Lightning on the module around every hook
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
_NOTHING = nullcontext()


class NoProfiler(PassThroughProfiler):
    """The Trainer's profiler while `trainer.profiler` is null: it profiles nothing, cheaply.

    Lightning wraps every hook it calls, about 65 in each training step, in
    `profiler.profile(name)`; its own no-op profiler inherits a `@contextmanager` that builds a
    generator per call. This one hands back one shared no-op context.
    """

    # one shared no-op context rather than Lightning's generator per call
    def profile(self, action_name: str) -> AbstractContextManager:  # type: ignore[override]
        return _NOTHING


def skip_inherited_batch_hooks(callbacks: Iterable[L.Callback]) -> None:
    """Set each per-batch hook that a callback inherits unchanged from `Callback` (a no-op) to
    None on that callback, so that Lightning no longer calls it.

    Lightning calls all six training-step hooks of every callback, defined or not, at every
    step (48 calls a step with eight callbacks, 45 of them no-ops); its dispatcher skips a hook
    that is not callable. Hooks a callback's class defines, and every call through the class
    (`super()`), are left as they are.
    """
    for callback in callbacks:
        for hook in BATCH_HOOKS:
            if getattr(type(callback), hook) is getattr(L.Callback, hook):
                setattr(callback, hook, None)


def _set_hook_name(module: Any, name: str, value: Any) -> None:
    if name == HOOK_NAME_ATTRIBUTE:
        object.__setattr__(module, name, value)
    else:
        super(type(module), module).__setattr__(name, value)


@cache
def _fast_hook_names(cls: type) -> type:
    return type(cls.__name__, (cls,), {"__setattr__": _set_hook_name, "__module__": cls.__module__})


def skip_hook_name_checks(module: L.LightningModule) -> None:
    """Store the name of the running hook on `module` directly.

    Lightning sets `_current_fx_name` on the module before and after each of about 40 hook
    calls a step; nn.Module's `__setattr__` first checks, in Python, whether the value is a
    Parameter, a Module or a buffer. The name is a string, never one of those. The module's
    class becomes a subclass of the same name that stores that one attribute directly.
    """
    if type(module).__setattr__ is not _set_hook_name:
        # a class is hashable; LightningModule's __hash__ signature confuses mypy
        module.__class__ = _fast_hook_names(type(module))  # type: ignore[arg-type]


def skip_nvml_probe_without_cuda() -> None:
    """Ask torch whether there is CUDA the usual way when there is none.

    Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import, so that asking never initialises
    CUDA (which would break forked DDP workers). Without an NVIDIA driver torch then tries to
    load NVML again on every such question, and Adam and AdamW ask on every step. With no CUDA
    device there is nothing to initialise.
    """
    import torch

    if os.environ.get(NVML_CHECK) == "1" and not torch.cuda.is_available():
        del os.environ[NVML_CHECK]


def trainer_arguments(profiler_set: bool) -> dict[str, Any]:
    """What the Trainer is built with: `NoProfiler` unless a profiler was asked for."""
    return {} if profiler_set else {"profiler": NoProfiler()}


def apply(trainer: L.Trainer, model: L.LightningModule) -> None:
    """Every speed-up that acts on a built Trainer and model."""
    skip_nvml_probe_without_cuda()
    # Lightning's connectors set this Trainer attribute without declaring it
    skip_inherited_batch_hooks(trainer.callbacks)  # type: ignore[attr-defined]
    skip_hook_name_checks(model)


def trained_batches(trainer: L.Trainer | None) -> int:
    """Batches of the current epoch trained so far (Lightning's progress count, which it also
    restores on resume), for the training batches' state in checkpoints; not a speed-up, so not
    behind the switch. "processed": a checkpoint saved in `on_train_batch_end` comes before the
    batch counts as completed."""
    if trainer is None:
        return 0
    # the batch progress's `current` is a _ProcessedTracker; the loop declares its base class
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
