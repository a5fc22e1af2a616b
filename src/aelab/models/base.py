"""What every autoencoder shares: the train/val/test steps, metric names and the optimizer."""

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn

from aelab.errors import ConfigError

NOISES = (None, "gaussian", "masking")
HOOK_NAME_ATTRIBUTE = "_current_fx_name"  # set by Lightning around every hook it calls
TRAIN = "train"  # the stage whose metrics are `train/...`
VAL = "val"  # and `val/...`
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class AutoencoderModule(L.LightningModule):
    """Subclasses define `encode`, `decode` and `loss_terms`; this class trains and logs them.

    `loss_terms(x, target)` returns a dict of scalars whose "loss" entry is minimised; each entry is
    logged as `<stage>/<name>` (`train/loss`, `val/kl`, ...), per step in training and per epoch,
    averaged over images, in validation and test. With `noise` set, training inputs are
    corrupted copies and the clean images are the targets (a denoising autoencoder).
    """

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        compile: bool = False,
        noise: str | None = None,
        noise_level: float = 0.0,
    ) -> None:
        super().__init__()
        if noise not in NOISES:
            raise ConfigError(f"model.noise={noise!r} is unknown; allowed: {list(NOISES)}")
        if noise is not None and not 0 < noise_level <= (1 if noise == "masking" else 10):
            allowed = "in (0, 1]" if noise == "masking" else "in (0, 10]"
            raise ConfigError(
                f"model.noise_level={noise_level} must be {allowed} for {noise} noise"
            )
        self.optimizer_factory = optimizer
        self.compile_modules = compile
        self.noise = noise
        self.noise_level = noise_level
        self._rng_states_to_restore: dict | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets `_current_fx_name` before and after each hook it calls: about 40 times
        # a training step. nn.Module's __setattr__ first asks whether the value is a Parameter,
        # a Module or a buffer (metaclass checks in Python): 4.9 us against 0.6 us here, about
        # 0.2 ms a training step. The hook's name is a string, never one of those.
        if name == HOOK_NAME_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_model(self) -> None:
        """`model.compile=true`: torch.compile every submodule in place, which keeps the
        state-dict keys, so compiled and plain checkpoints stay interchangeable."""
        if self.compile_modules:
            for module in self.children():
                module.compile()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the random state, so that a resumed deterministic run draws the same noise."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")

    def on_train_epoch_start(self) -> None:
        # Restored here rather than on load, once everything before the first step has run.
        states = self._rng_states_to_restore
        if states:
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_states_to_restore = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of reconstructing `target` from input `x` (a corrupted copy when denoising)."""
        raise NotImplementedError

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising input: Gaussian noise of std `noise_level` (clipped to [0, 1]), or
        masking that zeroes each pixel with probability `noise_level`."""
        if self.noise == "gaussian":
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return (x + self.noise_level * eps).clamp_(0, 1)
        if self.noise == "masking":
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.noise_level
            return x * keep
        return x

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x -> x_hat through the code, as shown in `val/reconstructions`."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, index: int
    ) -> torch.Tensor:
        x, _ = batch
        if stage == TRAIN:
            terms = self.loss_terms(self.corrupt(x), x)
        else:
            # Evaluation noise (the VAE's z draws) is seeded by the batch index in a forked RNG:
            # val/test losses are the same in every run and from every checkpoint, and the
            # training random stream does not depend on how often validation ran.
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(index)
                terms = self.loss_terms(x, x)
        if stage != TRAIN:
            self.log_dict(
                {f"{stage}/{name}": value for name, value in terms.items()},
                on_epoch=True,
                batch_size=x.shape[0],
                sync_dist=True,
                prog_bar=True,
            )
        elif self._is_logging_step():
            # Not `prog_bar`: Lightning reads progress-bar values back after every step (a host
            # sync per step on a GPU); `aelab.callbacks.ProgressBar` shows these when it redraws.
            # `sync_dist`: under DDP the curve is the mean over ranks, at one all-reduce per
            # logged metric every `log_every_n_steps` steps.
            self.log_dict(
                {f"{TRAIN}/{name}": value for name, value in terms.items()}, sync_dist=True
            )
        return terms["loss"]

    def _is_logging_step(self) -> bool:
        """Training metrics go to the logger every `trainer.log_every_n_steps` steps anyway;
        logging them only then spares Lightning's per-call bookkeeping (a third of a small
        model's step time) and, on a GPU, a host sync per step."""
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, TRAIN, batch_idx)

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, VAL, batch_idx)

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test", batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ConfigError(
                "model.optimizer is not set; give a `_partial_: true` optimizer config"
            )
        return self.optimizer_factory(self.parameters())
