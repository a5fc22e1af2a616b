"""Keep the work done so far when a run is interrupted or diverges."""

import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aelab.errors import ConfigError, Interrupted, TrainingDiverged


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C, SIGTERM (preemption) or SLURM's warning signal, stop at the end of the
    training batch, save `<dirpath>/<filename>.ckpt` there and stop the run. The checkpoint
    holds the position in the epoch (the datamodule's batch state) and the random states, so
    resuming with `ckpt_path=last` ends as the uninterrupted run would have.

    Under SLURM (`SLURM_JOB_ID` set), `requeue_on` (SLURM's `--signal`, sent before the time
    limit or a preemption) also requeues the job once with `scontrol requeue`; the requeued job
    resumes by itself. Lightning's own requeue is turned off (`train.make_trainer`): it saves
    inside the signal handler, at whatever point of a step the signal lands. A second Ctrl-C
    stops at once and saves nothing: weights caught mid-step are not worth resuming from.

    Not Lightning's OnExceptionCheckpoint: with that one present, Lightning silently resumes
    every `fit` from "last".
    """

    def __init__(
        self, dirpath: str, filename: str = "interrupted", requeue_on: list[str] | None = None
    ) -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        for name in requeue_on or []:
            if not isinstance(getattr(signal, str(name), None), signal.Signals):
                raise ConfigError(
                    f"callbacks.interrupt_checkpoint.requeue_on: {name!r} is not a signal name "
                    "(e.g. SIGUSR1)"
                )
        self.requeue_on = [getattr(signal, name) for name in requeue_on or []]
        self._requested: str | None = None  # why the run should stop at the next batch end
        self._saved = False
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        self._install(signal.SIGINT, self._on_sigint)
        if "SLURM_JOB_ID" in os.environ:
            for signum in self.requeue_on:
                self._install(signum, self._on_requeue_signal)

    def _install(self, signum: int, handler: Any) -> None:
        self._previous[signum] = signal.signal(signum, handler)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = "SIGINT"
        print(
            "\nCtrl-C: stopping after this batch, with a checkpoint (Ctrl-C again: at once)",
            file=sys.stderr,
        )

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        self._requested = self._requested or "requeue"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)  # a signal that came during validation

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        reason = self._requested or ("SIGTERM" if trainer.received_sigterm else None)
        if trainer.world_size > 1:
            # Every rank stops at the same batch: agreed on by a collective, on the logging
            # steps only (each is a host sync on a GPU) and at the epoch's end.
            # Lightning's connectors set this Trainer attribute without declaring it
            if trainer.global_step % trainer.log_every_n_steps and not trainer.is_last_batch:  # type: ignore[attr-defined]
                return
            stop = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            reason = reason or ("another rank's signal" if stop else None)
        if reason is None:
            return
        self._save(trainer)
        if reason == "SIGINT":
            raise KeyboardInterrupt
        if reason == "requeue":
            job = requeue_slurm_job() if trainer.is_global_zero else os.environ["SLURM_JOB_ID"]
            raise Interrupted(
                f"SLURM's warning signal at step {trainer.global_step}: saved {self.path} and "
                f"requeued job {job}, which resumes from it"
            )
        raise SIGTERMException

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        # Lightning's own SIGTERM stop under DDP comes between two batches: save there too.
        if isinstance(exception, SIGTERMException) and not self._saved:
            self._save(trainer)
        self.on_train_end(trainer, pl_module)


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job (an array job's own task); returns the job named."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ["SLURM_JOB_ID"]
    )
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        raise Interrupted(
            f"saved the checkpoint, but `scontrol requeue {job}` failed "
            f"({result.stderr.strip() or result.returncode}): resume with ckpt_path=last"
        )
    return job


class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt` at the end of every epoch, for `ckpt_path=last`. Its own callback:
    ModelCheckpoint's `save_last` writes last.ckpt only when a best checkpoint is written too,
    so once the metric stopped improving it would fall behind by as many epochs."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        # distinct from the best checkpoint's, also when that one monitors nothing either
        return type(self).__name__


class DivergenceGuard(L.Callback):
    """Stop with `TrainingDiverged` as soon as a checked loss is NaN or infinite.

    The training loss is checked every `trainer.log_every_n_steps` steps (not every step, which
    would stall a GPU on a host sync), and the validation loss after each validation, before
    any checkpoint of the epoch is written: the last good checkpoint is never overwritten.
    Under DDP the check reads the loss averaged over ranks, so that every rank stops at the
    same step; a rank that stopped alone would leave the others to crash in their next
    all-reduce (on a closed connection) instead of reporting the divergence.
    """

    def __init__(self, monitor: str | None = "val/loss") -> None:
        self.monitor = monitor

    def _fail(self, trainer: L.Trainer, what: str, value: float) -> None:
        saved = [
            Path(path)
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint)
            for path in (cb.last_model_path, cb.best_model_path)
        ]
        saved = [p for p in saved if p.name and p.is_file()]
        last = max(saved, key=lambda p: p.stat().st_mtime) if saved else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged: {what} is {value} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); {kept}"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % trainer.log_every_n_steps and not trainer.is_last_batch:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        # a copy: DDP's reduce all-reduces in place
        loss = trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        if not torch.isfinite(loss).all():
            self._fail(trainer, "train/loss", float(loss))

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if not trainer.sanity_checking and value is not None and not math.isfinite(float(value)):
            # a null monitor logs no value, so value is None here
            self._fail(trainer, self.monitor, float(value))  # type: ignore[arg-type]
