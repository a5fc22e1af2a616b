"""A model's arguments: the configs among them built into objects, and those left out of the
hyperparameters that its checkpoints save."""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from aelab.errors import AelabError, root_cause
from aelab.validation import handed_to


def arguments(cls: type, shared: type) -> set[str]:
    """The arguments that `cls` takes by name: its own and those of every class its `**kwargs`
    pass through down to `shared`, the class that takes what every model shares (`handed_to`),
    less the arguments of those classes that `cls` sets itself (`cls.fixed`: IWAE's beta)."""
    names: set[str] = set()
    for taker in (cls, *handed_to(cls, shared)):
        parameters = inspect.signature(taker).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names - set(getattr(cls, "fixed", ()))


def not_saved(cls: type, shared: type, optimizer: Any, scheduler: Any) -> list[str]:
    """What the hyperparameters of a `cls` (every argument of its own and its `**shared`) leave
    out: an optimizer or scheduler given as a Python object (a `functools.partial`) rather than
    a config, so that every checkpoint loads weights-only; and what a parent's `__init__` takes
    that `cls` does not (IWAE's VAE sets `beta`)."""
    given = {"optimizer": optimizer, "scheduler": scheduler}
    objects = [name for name, value in given.items() if not isinstance(value, Mapping | None)]
    parents = {n for c in cls.__mro__ if issubclass(c, shared) for n in arguments(c, shared)}
    return [*objects, *(parents - arguments(cls, shared))]


def build(config: Mapping[str, Any], **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` of a plain config, with the user's error (a ConfigError from the
    network, say) raised as it is rather than wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(dict(config), **kwargs, _convert_="all")
    except InstantiationException as err:
        if isinstance(cause := root_cause(err), AelabError):
            raise cause from None
        raise


def built(factory: Mapping[str, Any] | Callable | None) -> Callable | None:
    """A `_partial_` config instantiated (the callable it describes), or the callable itself."""
    return build(factory) if isinstance(factory, Mapping) else factory
