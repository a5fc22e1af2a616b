"""Lightning callbacks of our own (the rest come from Lightning itself)."""

from aelab.callbacks.image_grids import ImageGrids

__all__ = ["ImageGrids"]
