"""aelab: a PyTorch Lightning + Hydra research template for autoencoders.

`aelab.compose`, `aelab.fit` and `aelab.load_run` (aelab.api) are imported when first used, so
that `import aelab` stays cheap.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "compose", "fit", "load_run"]

if TYPE_CHECKING:
    from aelab.api import Run, compose, fit, load_run


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'aelab' has no attribute {name!r}")
