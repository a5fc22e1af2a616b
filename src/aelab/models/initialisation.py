"""The hook that initialises a model when its first fit starts (`model.init`,
`model.output_bias`; aelab.nets.init): not when Lightning resumes a checkpoint, nor after weights
were loaded into it (`init_from`, `load_from_checkpoint`, evaluation, generation, export), nor at
a second fit of the same model. The training images exist only after the datamodule's `setup`,
and the model is built before it: so the output bias is set at `on_fit_start`, and Glorot's
weights with it. Nothing is added to the state dict: checkpoints of either choice load into
models of either.
"""

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from aelab.errors import ConfigError
from aelab.nets.init import glorot_, pixel_means, set_output_bias

log = logging.getLogger(__name__)


def weights_given(model: "Initialisation", incompatible_keys: Any) -> None:
    """After `load_state_dict`: the weights came from elsewhere, leave them."""
    model.initialised = True


class Initialisation(L.LightningModule):
    """`init` and `output_bias` (set by the model's constructor) applied once, at the start of
    the first fit of a model whose weights were not loaded; under DDP, rank 0's weights are then
    copied to every rank (each rank draws its own Glorot weights)."""

    init: str = "default"
    output_bias: str = "default"
    net: Any  # the encoder/decoder network, an nn.Module (AutoencoderModule builds it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initialised = False  # weights loaded or initialised: a fit leaves them alone
        self.register_load_state_dict_post_hook(weights_given)

    def output_inverse(self, means: torch.Tensor) -> torch.Tensor:
        """The decoder's output (before its activation) whose mean is `means`: logit, since the
        families' decoders end in sigmoid (the Bernoulli's probabilities, and the means of the
        Gaussian and of the discretized logistic are sigmoid(g(z))). The Autoencoder's follows
        its `output_activation`."""
        return torch.logit(means)

    def on_fit_start(self) -> None:
        if self.initialised or self.trainer.ckpt_path is not None:
            return
        self.initialised = True
        if self.init == "glorot":
            glorot_(self)
        if self.output_bias == "data":
            set_output_bias(self.net, self.training_pixel_means(), self.output_inverse)
            log.info("The decoder's output bias starts at the training images' pixel means")
        changed = self.init != "default" or self.output_bias != "default"
        if changed and dist.is_available() and dist.is_initialized():
            for parameter in self.parameters():  # rank 0's weights on every rank
                dist.broadcast(parameter.data, src=0)

    def training_pixel_means(self) -> torch.Tensor:
        """Each pixel's mean (C, H, W) over the datamodule's training split: under
        `data.binarize=dynamic` the grey images (whose means the binary draws have, and what
        yburda/iwae uses), under `static` the once-binarized ones."""
        # Lightning's connectors set this Trainer attribute without declaring it
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        train_set = getattr(datamodule, "train_set", None)
        images = getattr(train_set, "images", None)
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ConfigError(
                "model.output_bias=data needs the training images: a datamodule whose train_set "
                "has `images` (N, C, H, W); set model.output_bias=default"
            )
        return pixel_means(images, getattr(train_set, "after_gather", None))
