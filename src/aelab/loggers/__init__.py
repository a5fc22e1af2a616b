"""Loggers of our own: TensorBoard laid out for comparing runs (the rest come from Lightning)."""

from aelab.loggers.tensorboard import TensorBoardLogger

__all__ = ["TensorBoardLogger"]
