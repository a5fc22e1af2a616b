"""What the image grids and evaluation's samples ask of a model with a prior."""

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Generative(Protocol):
    """A model with a prior: `sample(n)` decodes n draws from it (`generator` seeds them)."""

    def sample(
        self, z: torch.Tensor | int, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...
