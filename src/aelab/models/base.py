"""What every autoencoder shares: network, train/val/test steps, metrics, optimizer, scheduler."""

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from aelab.errors import AelabError, ConfigError, root_cause
from aelab.validation import building

NOISES = (None, "gaussian", "masking")
TRAIN = "train"  # the stage whose metrics are `train/...`
VAL = "val"  # and `val/...`
TEST = "test"
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
DEFAULT_NET = {"_target_": "aelab.nets.MLP"}


@runtime_checkable
class Generative(Protocol):
    """A model with a prior: `sample(n)` decodes n draws from it (`generator` seeds them)."""

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


class AutoencoderModule(L.LightningModule):
    """Subclasses define `encode`, `decode` and `loss_terms`; this class trains and logs them.

    `net` is the config of an encoder/decoder network (`aelab.nets`), built here for the image
    shape and code size; its config, like every other argument, is plain data, so a checkpoint
    holds no pickled objects and loads weights-only. `optimizer` and `scheduler` are `_partial_`
    configs (or callables) completed with the parameters and the optimizer.

    `loss_terms(x, target)` returns a dict of scalars whose "loss" entry is minimised; each entry is
    logged as `<stage>/<name>` (`train/loss`, `val/kl`, ...), per step in training and per epoch,
    averaged over images, in validation and test. With `noise` set, training inputs are
    corrupted copies and the clean images are the targets (a denoising autoencoder).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        net: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | OptimizerFactory | None = None,
        scheduler: Mapping[str, Any] | Callable | None = None,
        compile: bool = False,
        noise: str | None = None,
        noise_level: float = 0.0,
    ) -> None:
        super().__init__()
        if noise not in NOISES:
            raise ConfigError(f"model.noise={noise!r} is unknown; allowed: {list(NOISES)}")
        limit = 1 if noise == "masking" else 10
        if noise is not None and not 0 < noise_level <= limit:
            raise ConfigError(f"model.noise_level={noise_level} must be in (0, {limit}] ({noise})")
        self.latent_dim = latent_dim
        self.net = build(net or DEFAULT_NET, image_shape=list(image_shape), latent_dim=latent_dim)
        # one blank image: Lightning's model summary shows FLOPs and sizes per image with it
        # (not under compile: it would compile the network for a batch of one first)
        self.example_input_array = None if compile else torch.zeros(1, *image_shape)
        self.optimizer_factory = _built(optimizer)
        self.scheduler_factory = _built(scheduler)
        self.compile_modules = compile
        self.noise = noise
        self.noise_level = noise_level
        self.epoch_progress = 0.0  # epochs of training done, fractional: warm-ups read it
        self._sums: dict[str, tuple[torch.Tensor, int]] = {}  # this evaluation's sums, images
        self._rng_states_to_restore: dict | None = None
        self.save_hyperparameters(logger=False, ignore=not_saved(type(self), optimizer, scheduler))

    def configure_model(self) -> None:
        """`model.compile=true`: torch.compile every submodule in place, which keeps the
        state-dict keys, so compiled and plain checkpoints stay interchangeable."""
        if self.compile_modules:
            for module in self.children():
                module.compile()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the random state, so that a resumed deterministic run draws the same noise, and
        the validation metrics the checkpoint was chosen by, so that a sweep reports the
        metrics of the checkpoint it tested."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["val_metrics"] = {
            name: float(value)
            for name, value in self.trainer.callback_metrics.items()
            if name.startswith(f"{VAL}/")
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")

    def _restore_rng_states(self, states: dict) -> None:
        """The saved random states, at the first step after a resume: once everything before
        it has run (Lightning calls no epoch-start hook when it resumes mid-epoch)."""
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        self._rng_states_to_restore = None

    def on_train_epoch_start(self) -> None:
        if self.scheduler_factory is not None:
            # The rate of this epoch (the scheduler steps once per epoch), logged as `lr`.
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])

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

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self._rng_states_to_restore:
            self._restore_rng_states(self._rng_states_to_restore)
        x, _ = batch
        self.epoch_progress = self.current_epoch + batch_idx / max(
            1, self.trainer.num_training_batches
        )
        terms = self.loss_terms(self.corrupt(x), x)
        # Lightning's connectors set this Trainer attribute without declaring it
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]
            # Only on the steps the logger writes anyway: handing values to `self.log` on every
            # step costs Lightning's bookkeeping each time and, on a GPU, a host sync. Not
            # `prog_bar` (read back after every step): `aelab.callbacks.ProgressBar` shows
            # them when it redraws. `sync_dist`: under DDP the curve is the mean over ranks.
            self.log_dict({f"{TRAIN}/{name}": v for name, v in terms.items()}, sync_dist=True)
        return terms["loss"]

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluation_step(batch, VAL, batch_idx)

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluation_step(batch, TEST, batch_idx)

    def _evaluation_step(self, batch, stage: str, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        # Evaluation noise (the VAE's z draws) is seeded by the batch index in a forked RNG:
        # val/test losses are the same in every run and from every checkpoint, and the
        # training random stream does not depend on how often validation ran.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_idx)
            terms = self.loss_terms(x, x)
        count = x.shape[0]
        for name, value in terms.items():
            total, images = self._sums.get(name, (0.0, 0))
            self._sums[name] = (total + value.detach() * count, images + count)
        return terms["loss"]

    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def on_test_epoch_start(self) -> None:
        self._sums = {}

    def on_validation_epoch_end(self) -> None:
        self._log_means(VAL)

    def on_test_epoch_end(self) -> None:
        self._log_means(TEST)

    def _log_means(self, stage: str) -> None:
        """Log each term's mean over every image of the epoch, on all ranks together: sums and
        image counts are added up across ranks, so shards of unequal size (the test set on 3
        ranks) still give the mean over the whole set. Written out because Lightning's mean
        over ranks divides its integer image count in place (rounding it), and torchmetrics'
        MeanMetric reads a value back to the host at every update (its NaN check)."""
        if not self._sums:
            return
        names = sorted(self._sums)
        totals = torch.stack([self._sums[name][0] for name in names])
        counts = torch.tensor([self._sums[name][1] for name in names], device=totals.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        counts = self.trainer.strategy.reduce(counts.to(totals.dtype), reduce_op="sum")
        for name, mean in zip(names, totals / counts, strict=True):
            self.log(f"{stage}/{name}", mean, prog_bar=True)
        self._sums = {}

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("model.optimizer is not set; choose one, e.g. optimizer=adam")
        with building("model.optimizer"):
            optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        with building("model.scheduler"):
            schedule = {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def arguments(cls: type) -> set[str]:
    """The arguments that `cls` takes by name: its own, and AutoencoderModule's when it hands
    `**shared` on."""
    parameters = inspect.signature(cls).parameters
    names = {n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        names |= arguments(AutoencoderModule)
    return names


def not_saved(cls: type, optimizer: Any, scheduler: Any) -> list[str]:
    """What the hyperparameters of a `cls` (every argument of its own and its `**shared`) leave
    out: an optimizer or scheduler given as a Python object (a `functools.partial`) rather than
    a config, so that every checkpoint loads weights-only; and what a parent's `__init__` takes
    that `cls` does not (IWAE's VAE sets `beta`)."""
    given = {"optimizer": optimizer, "scheduler": scheduler}
    objects = [name for name, value in given.items() if not isinstance(value, Mapping | None)]
    parents = {n for c in cls.__mro__ if issubclass(c, AutoencoderModule) for n in arguments(c)}
    return [*objects, *(parents - arguments(cls))]


def build(config: Mapping[str, Any], **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` of a plain config, with the user's error (a ConfigError from the
    network, say) raised as it is rather than wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(dict(config), **kwargs, _convert_="all")
    except InstantiationException as err:
        if isinstance(cause := root_cause(err), AelabError):
            raise cause from None
        raise


def _built(factory: Mapping[str, Any] | Callable | None) -> Callable | None:
    """A `_partial_` config instantiated (the callable it describes), or the callable itself."""
    return build(factory) if isinstance(factory, Mapping) else factory
