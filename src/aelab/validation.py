"""Checks that turn impossible configs and foreign checkpoints into one clear line each,
before any data is loaded or any step is taken."""

from numbers import Number
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import torch

from aelab.errors import ConfigError

POSITIVE = "a number > 0"
PROFILERS = ("simple", "advanced", "pytorch", "xla")  # the names Lightning's Trainer knows


def _require(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = _select(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{key}={value!r} is not allowed; it must be {allowed}")


def _select(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def _positive_int(value) -> bool:
    return isinstance(value, int) and value > 0


def check_config(cfg: DictConfig) -> None:
    """Reject values that cannot work, naming the key and what is allowed."""
    _require(cfg, "model.latent_dim", _positive_int, "an integer > 0")
    hidden = _select(cfg, "model.hidden_dims")
    if hidden is not None and not all(_positive_int(h) for h in hidden):
        raise ConfigError(
            f"model.hidden_dims={list(hidden)} is not allowed; every size must be > 0"
        )
    _require(cfg, "model.optimizer.lr", lambda v: isinstance(v, Number) and v > 0, POSITIVE)
    _require(cfg, "data.batch_size", _positive_int, "an integer > 0")
    _require(cfg, "data.chunk_size", _positive_int, "an integer > 0 (images per gather)")
    _require(
        cfg,
        "data.val_size",
        lambda v: _positive_int(v) or (isinstance(v, float) and 0 < v < 1),
        "an integer > 0 (images held out for validation) or a fraction in (0, 1)",
    )
    _require(cfg, "data.num_workers", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    _require(
        cfg,
        "trainer.max_epochs",
        lambda v: isinstance(v, int) and (v > 0 or v == -1),
        "an integer > 0, or -1 for no limit",
    )
    _require(
        cfg,
        "trainer.profiler",
        lambda v: isinstance(v, DictConfig) or v in PROFILERS,
        f"null (no profiling), one of {', '.join(PROFILERS)}, or a config with a _target_",
    )
    _check_optimizer(_select(cfg, "model.optimizer"))


def _check_optimizer(optimizer: Any) -> None:
    """The optimizer class exists and takes every key given for it (after a `_target_` swap,
    e.g. to torch.optim.RMSprop, which has no `fused`)."""
    import inspect

    from hydra.utils import get_object

    if not isinstance(optimizer, DictConfig) or optimizer.get("_target_") is None:
        return
    target = optimizer._target_
    try:
        accepted = inspect.signature(get_object(target)).parameters
    except Exception:
        raise ConfigError(
            f"model.optimizer._target_={target!r} cannot be imported; "
            "e.g. torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD"
        ) from None
    for key in optimizer:
        if not str(key).startswith("_") and key not in accepted:
            arguments = ", ".join(name for name in accepted if name != "params")
            raise ConfigError(
                f"model.optimizer.{key} is not an argument of {target} ({arguments}); "
                f"remove it with ~model.optimizer.{key}"
            )


def check_checkpoint(path: str | Path, model: "torch.nn.Module") -> None:
    """Load a checkpoint weights-only and make sure it holds this model, for these images."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"{path}: not a loadable checkpoint of this template ({reason})"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(
        checkpoint
    ):
        raise ConfigError(
            f"{path}: not a checkpoint of this template (no state_dict or hyper_parameters)"
        )
    saved_shape = tuple(checkpoint["hyper_parameters"].get("image_shape", ()))
    image_shape = tuple(model.hparams["image_shape"])
    if saved_shape != image_shape:
        raise ConfigError(
            f"{path}: trained on images of shape {saved_shape}, the data has {image_shape}"
        )
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved != expected:
        different = sorted(set(saved) ^ set(expected)) or [
            k for k in saved if saved[k] != expected[k]
        ]
        raise ConfigError(
            f"{path}: holds a different model than the config describes "
            f"(differs in {', '.join(different[:3])}); use the model overrides it was trained with"
        )
    for name, tensor in checkpoint["state_dict"].items():
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"{path}: parameter {name} holds NaN or infinite values")
