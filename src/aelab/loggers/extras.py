"""The optional packages of the loggers: a missing one is one line naming the extra to install."""

from importlib.util import find_spec

from aelab.errors import ConfigError


def require(module: str, extra: str, key: str) -> None:
    """Raise a ConfigError naming `pip install -e ".[extra]"` when `module` is not installed."""
    if find_spec(module) is None:
        raise ConfigError(
            f'{key} needs the {module} package, which is not installed: pip install -e ".[{extra}]"'
        )
