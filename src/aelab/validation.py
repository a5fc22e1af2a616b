"""Checks that turn impossible configs and foreign checkpoints into one clear line each,
before any data is loaded or any step is taken."""

import collections.abc
import inspect
import textwrap
import types
import typing
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import lightning as L

from aelab.errors import AelabError, ConfigError, root_cause

POSITIVE = "a number > 0"
PROFILERS = ("simple", "advanced", "pytorch", "xla")  # the names Lightning's Trainer knows
# Set by the code that instantiates the node, not by the config.
PROVIDED = {"model": {"image_shape"}, "model.net": {"image_shape", "latent_dim"}, "data": {"seed"}}
# Where a `**kwargs` of the node's class goes: a model's `**shared` are AutoencoderModule's
# arguments, checked as its own; aelab's MLflow logger hands the rest to Lightning's.
HANDED_ON = {
    "model": "aelab.models.AutoencoderModule",
    "logger.mlflow": "lightning.pytorch.loggers.MLFlowLogger",
}
# Keys of the data config that may differ when a run is resumed: where the files are and how
# they are loaded, not which images are trained on.
DATA_LOADING = {
    "path",
    "data_dir",
    "num_workers",
    "pin_memory",
    "on_device",
    "system_dirs",
    "chunk_size",
    "cache_dir",
}


def _require(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not ok(value):
        raise ConfigError(f"{key}={value!r} is not allowed; it must be {allowed}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and value > 0


def check_files(cfg: DictConfig) -> None:
    """The checkpoint files a run reads are checkpoints: checked before anything imports torch,
    so that a wrong file is refused at once."""
    for key in ("ckpt_path", "init_from"):
        if cfg.get(key) not in (None, "last"):
            check_checkpoint_file(key, cfg[key])


def check_config(cfg: DictConfig) -> None:
    """Reject values that cannot work and keys that nothing reads, naming the key and what is
    allowed."""
    check_files(cfg)  # first: the checks below import the code (torch)
    _require(cfg, "model.latent_dim", _positive_int, "an integer > 0")
    _require(cfg, "model.optimizer.lr", lambda v: isinstance(v, int | float) and v > 0, POSITIVE)
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
    keys = ("model", "model.net", "model.optimizer", "model.scheduler", "data", "data.source")
    for key in (*keys, "trainer"):
        check_arguments(key, OmegaConf.select(cfg, key))
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            check_arguments(f"{group}.{name}", node)


def check_arguments(key: str, node: Any) -> None:
    """The `_target_` of config `key` can be imported and takes every key given for it: a key
    that nothing would read is an error (e.g. model.net.hidden_dims for a convolutional net, or
    `fused` after a swap to torch.optim.RMSprop)."""
    from hydra.utils import get_object

    if not isinstance(node, DictConfig) or node.get("_target_") is None:
        return
    target = node._target_
    try:
        takers = [get_object(target)]
        parameters = dict(inspect.signature(takers[0]).parameters)
    except Exception:
        raise ConfigError(f"{key}._target_={target!r} cannot be imported") from None
    receiver = _receiver(key, takers[0]) if _hands_on(parameters) else None
    if receiver is not None:
        takers += handed_to(takers[0], receiver)
        parameters = {n: p for n, p in parameters.items() if p.kind != p.VAR_KEYWORD}
        for taker in takers[1:]:
            parameters = inspect.signature(taker).parameters | parameters
        fixed = set(getattr(takers[0], "fixed", ()))
        parameters = {
            n: p for n, p in parameters.items() if n not in fixed and p.kind != p.VAR_KEYWORD
        }
    check_types(key, node, *takers)
    if _hands_on(parameters):
        return
    provided = PROVIDED.get(key, set())
    for name in node:
        name = str(name)
        if not name.startswith("_") and name not in parameters:
            arguments = ", ".join(
                n
                for n, p in parameters.items()
                if n not in provided
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and n not in ("params", "optimizer", "self")
            )
            raise ConfigError(
                f"{key}.{name} is not an argument of {target} (it takes {arguments}); "
                f"remove it with ~{key}.{name}"
            )


def _hands_on(parameters: typing.Mapping[str, inspect.Parameter]) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def handed_to(cls: type, receiver: type) -> list[type]:
    """The classes that the `**kwargs` of `cls` pass through, nearest first, down to `receiver`:
    each time the nearest base with an `__init__` of its own (a model's `**vae` go to VAE, whose
    `**shared` go to AutoencoderModule)."""
    chain: list[type] = []
    while cls is not receiver and _hands_on(inspect.signature(cls).parameters):
        cls = next(c for c in cls.__mro__[1:] if "__init__" in vars(c) and issubclass(c, receiver))
        chain.append(cls)
    return chain


def _receiver(key: str, target: Any) -> Any:
    """The class that a `**kwargs` of `target`, the class of config `key`, goes to; None if
    unknown (then any key passes)."""
    from hydra.utils import get_object

    receiver = get_object(HANDED_ON[key]) if key in HANDED_ON else None
    if inspect.isclass(target) and receiver is not None and issubclass(target, receiver):
        return receiver
    return None


def check_checkpoint_file(key: str, path: str | Path) -> None:
    """`path` (given as `key`) exists and is a zip archive: checked before torch is imported,
    so that a wrong file is refused at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        # torch.save writes zip archives; its own error for other files advises
        # weights_only=False, which would run whatever code a pickle holds
        raise ConfigError(
            f"{path}: not a checkpoint (a checkpoint is the zip archive torch.save writes); "
            "a file cut short by a full disk or a killed copy looks like this too"
        )


def check_run_or_checkpoint(path: str | Path) -> None:
    """`ckpt_path` of eval, generate and export: a run folder, or a checkpoint file (checked
    at once, before torch is imported)."""
    if not Path(path).is_dir():
        check_checkpoint_file("ckpt_path", path)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint of this template, loaded weights-only (a file that would run code when
    loaded, or is no checkpoint, is one clear line)."""
    import torch

    path = Path(path)
    check_checkpoint_file("ckpt_path", path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = " ".join(str(err).split()).split(". ")[0]
        raise ConfigError(
            f"{path}: not a loadable checkpoint of this template, damaged or truncated "
            f"({textwrap.shorten(first, 160, placeholder=' ...')})"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(
        checkpoint
    ):
        raise ConfigError(
            f"{path}: not a checkpoint of this template (no state_dict or hyper_parameters)"
        )
    return checkpoint


def check_checkpoint(
    path: str | Path, model: "L.LightningModule", checkpoint: dict | None = None
) -> dict:
    """Make sure the checkpoint at `path` (loaded here unless given) holds this model for these
    images, and return it."""
    import torch

    path = Path(path)
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    saved_shape = tuple(checkpoint["hyper_parameters"].get("image_shape", ()))
    image_shape = tuple(model.hparams["image_shape"])
    if saved_shape != image_shape:
        raise ConfigError(
            f"{path}: trained on images of shape {saved_shape}, the data has {image_shape}"
        )
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved != expected:
        raise ConfigError(
            f"{path}: holds a different model than the config describes "
            f"({model_differences(checkpoint, model, saved, expected)}); use the model "
            "overrides it was trained with"
        )
    for name, tensor in checkpoint["state_dict"].items():
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"{path}: parameter {name} holds NaN or infinite values")
    return checkpoint


def model_differences(
    checkpoint: dict, model: "L.LightningModule", saved: dict, expected: dict
) -> str:
    """The config keys (`model.latent_dim=20, not 3`) on which a checkpoint's saved
    hyperparameters and the model's differ; the class or the tensors when no key does."""
    trained = _flat(_as_dict(_plain(checkpoint["hyper_parameters"])), "model")
    current = _flat(_as_dict(_plain(dict(model.hparams))), "model")
    keys = [k for k in sorted(set(trained) | set(current)) if trained.get(k) != current.get(k)]
    if keys:
        shown = [f"{k}={trained.get(k)!r}, not {current.get(k)!r}" for k in keys[:4]]
        return "trained with " + "; ".join(shown) + (" ..." if len(keys) > 4 else "")
    tensors = sorted(set(saved) ^ set(expected)) or [k for k in saved if saved[k] != expected[k]]
    return f"another model class: its tensors differ in {', '.join(tensors[:3])}"


def _plain(value: Any) -> Any:
    """Hyperparameters as the checkpoint stores them (configs as dicts, tuples as lists)."""
    if isinstance(value, DictConfig) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or OmegaConf.is_list(value):
        return [_plain(v) for v in value]
    return value


def check_same_run(cfg: DictConfig, ckpt_path: str | Path) -> None:
    """A resumed run goes on in the folder of its checkpoint: refuse a model or data config that
    differs from the one that run was started with (its `config.yaml`)."""
    from aelab.config import RUN_CONFIG

    saved_file = Path(ckpt_path).absolute().parent.parent / RUN_CONFIG
    if not saved_file.is_file():
        return
    saved = _as_dict(OmegaConf.to_container(OmegaConf.load(saved_file)))
    current = _as_dict(OmegaConf.to_container(cfg, resolve=True))
    for group in ("model", "data"):
        old, new = _flat(saved.get(group, {}), group), _flat(current.get(group, {}), group)
        for key in sorted(set(old) | set(new)):
            if key.rsplit(".", 1)[-1] in DATA_LOADING and group == "data":
                continue
            if old.get(key) != new.get(key):
                raise ConfigError(
                    f"ckpt_path={str(ckpt_path)!r}: that run was started with "
                    f"{key}={old.get(key)!r}, not {new.get(key)!r}; resume with its own overrides "
                    f"({saved_file.parent}/.hydra/overrides.yaml), or start a new run from its "
                    "weights with init_from=PATH"
                )


def _as_dict(container: Any) -> dict[str, Any]:
    """A run config as a plain dict (a config file holds a mapping)."""
    return container if isinstance(container, dict) else {}


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= _flat(value, f"{prefix}.{key}")
    return flat


def check_types(key: str, node: DictConfig, *targets: Any) -> None:
    """Every value given for `targets` (a class, and the one its `**kwargs` go to) matches its
    type hint (an int where an int is wanted, a list of ints, one of a Literal's values, ...), so
    that a wrong type is one line naming the key instead of a traceback from deep inside the
    code. Hints this cannot read pass."""
    hints: dict[str, Any] = {}
    for target in reversed(targets):
        try:
            hints |= typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
        except Exception:
            return
    for name in node:
        name = str(name)
        if name.startswith("_") or name not in hints:
            continue
        if OmegaConf.is_missing(node, name):
            raise ConfigError(
                f"{key}.{name} is not set; give it on the command line: {key}.{name}=..."
            )
        value = node[name]
        if isinstance(value, DictConfig) and "_target_" in value:
            check_arguments(f"{key}.{name}", value)  # a config of its own
            continue
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        hint = hints[name]
        if not _matches(value, hint):
            raise ConfigError(
                f"{key}.{name}={value!r} is not allowed; it must be {_describe(hint)}"
            )


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    if inspect.isclass(hint) and not isinstance(value, dict):
        return isinstance(value, hint)  # e.g. a Tensor: no number, string or list is one
    return True  # a config of a class, a callable: left to the code that takes it


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


@contextmanager
def building(key: str) -> Iterator[None]:
    """What a library says while building the object of config `key` from it (torch's
    "Invalid weight_decay value: -1", a Linear layer of -3 units) becomes one line naming the
    key; the original error stays chained (HYDRA_FULL_ERROR=1 shows it)."""
    from hydra.errors import InstantiationException

    try:
        yield
    except Exception as err:
        problem = root_cause(err)
        if isinstance(problem, AelabError) or not isinstance(
            problem, ValueError | TypeError | RuntimeError | InstantiationException
        ):
            raise
        text = " ".join(str(problem).split())
        raise ConfigError(f"{key} cannot be built from its config: {text}") from err
