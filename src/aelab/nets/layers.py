"""Building blocks shared by the networks."""

from collections.abc import Sequence
from itertools import pairwise

from torch import nn

from aelab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str, key: str = "model.net.activation") -> nn.Module:
    """The activation layer called `name`; `key` is the config key named in the error."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"{key}={name!r} is not an activation; allowed: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(
    sizes: Sequence[int],
    hidden_activation: str,
    last_activation: bool = False,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1] with `hidden_activation` between them (and
    after the last one too, with `last_activation`); with `batch_norm`, a BatchNorm1d between
    each such Linear and its activation (never after an output layer without one)."""
    activation(hidden_activation)  # rejects a bad name even where no hidden layer would use it
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(activation(hidden_activation))
    return nn.Sequential(*layers)
