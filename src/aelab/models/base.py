"""What every autoencoder shares: network, train/val/test steps, metrics, optimizer, scheduler."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from aelab.errors import ConfigError
from aelab.models.arguments import build, built, not_saved
from aelab.models.checkpoint_state import CheckpointState
from aelab.models.initialisation import Initialisation
from aelab.models.means import EvaluationMeans
from aelab.models.noise import check_noise, corrupted
from aelab.models.stages import TRAIN
from aelab.nets.init import check_choices, output_layer
from aelab.validation import building

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
DEFAULT_NET = {"_target_": "aelab.nets.MLP"}


class AutoencoderModule(CheckpointState, EvaluationMeans, Initialisation):
    """Subclasses define `encode`, `decode` and `loss_terms`; this class trains and logs them
    (its three bases keep the random state in checkpoints, log the evaluation means and
    initialise the weights when the first fit starts).

    `net` is the config of an encoder/decoder network (`aelab.nets`), built here for the image
    shape and code size; its config, like every other argument, is plain data, so a checkpoint
    holds no pickled objects and loads weights-only. `optimizer` and `scheduler` are `_partial_`
    configs (or callables) completed with the parameters and the optimizer.

    `loss_terms(x, target)` returns a dict of scalars whose "loss" entry is minimised; each entry is
    logged as `<stage>/<name>` (`train/loss`, `val/kl`, ...), per step in training and per epoch,
    averaged over images, in validation and test. With `noise` set, training inputs are
    corrupted copies and the clean images are the targets (a denoising autoencoder).

    `init` (`default`: PyTorch's, or `glorot`) and `output_bias` (`default`, or `data`: the
    decoder's output bias from the training images' pixel means) are applied when the first fit
    of a model whose weights were not loaded starts (aelab.nets.init,
    aelab.models.initialisation).
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
        init: str = "default",
        output_bias: str = "default",
    ) -> None:
        super().__init__()
        check_noise(noise, noise_level)
        check_choices(init, output_bias)
        self.latent_dim = latent_dim
        self.net = build(net or DEFAULT_NET, image_shape=list(image_shape), latent_dim=latent_dim)
        if output_bias == "data":
            output_layer(self.net, image_shape)  # a network without one fails here, not at fit
        self.init = init
        self.output_bias = output_bias
        # one blank image: Lightning's model summary shows FLOPs and sizes per image with it
        # (not under compile: it would compile the network for a batch of one first)
        self.example_input_array = None if compile else torch.zeros(1, *image_shape)
        self.optimizer_factory = built(optimizer)
        self.scheduler_factory = built(scheduler)
        self.compile_modules = compile
        self.noise = noise
        self.noise_level = noise_level
        self.epoch_progress = 0.0  # epochs of training done, fractional: warm-ups read it
        self.save_hyperparameters(
            logger=False, ignore=not_saved(type(self), AutoencoderModule, optimizer, scheduler)
        )

    def configure_model(self) -> None:
        """`model.compile=true`: torch.compile every submodule in place, which keeps the
        state-dict keys, so compiled and plain checkpoints stay interchangeable."""
        if self.compile_modules:
            for module in self.children():
                module.compile()

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
        """The denoising input (aelab.models.noise); `x` itself without `noise`."""
        return corrupted(x, self.noise, self.noise_level, generator)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x -> x_hat through the code, as shown in `val/reconstructions`."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
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
        return self._evaluation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluation_step(batch, batch_idx)

    def _evaluation_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        # Evaluation noise (the VAE's z draws) is seeded by the batch index in a forked RNG:
        # val/test losses are the same in every run and from every checkpoint, and the
        # training random stream does not depend on how often validation ran.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_idx)
            terms = self.loss_terms(x, x)
        self.add_to_means(terms, x.shape[0])  # `val/...`, `test/...` at the epoch's end
        return terms["loss"]

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
