"""Loggers of our own: TensorBoard laid out for comparing runs, MLflow with a store in the run
folder, W&B offline unless logged in (the rest come from Lightning)."""

from aelab.loggers.mlflow import MLFlowLogger
from aelab.loggers.tensorboard import TensorBoardLogger
from aelab.loggers.wandb import WandbLogger

__all__ = ["MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
