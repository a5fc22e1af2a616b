"""Other libraries' console output, turned down in one place (aelab.quiet)."""

import logging
import os

import lightning  # noqa: F401  (sets its loggers' levels on import, as in a run)
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from aelab.quiet import quiet_third_parties


@pytest.fixture
def levels(monkeypatch):
    """Lightning's and Optuna's levels as their imports leave them, put back afterwards."""
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    names = ("lightning.pytorch", "lightning.fabric", "optuna")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    yield {name: logging.getLogger(name) for name in names}
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    HydraConfig.instance().cfg = None


def test_other_libraries_speak_at_warning(levels):
    quiet_third_parties()
    assert {logger.level for logger in levels.values()} == {logging.WARNING}
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # read when mlflow is imported
    # a run's new MLflow store has no experiment yet: Lightning's WARNING about it is dropped
    mlflow = logging.getLogger("lightning.pytorch.loggers.mlflow")
    made = "Experiment with name train not found. Creating it."
    assert not mlflow.filter(logging.LogRecord(mlflow.name, logging.WARNING, "", 0, made, (), None))
    other = "Failed to log the config"
    assert mlflow.filter(logging.LogRecord(mlflow.name, logging.WARNING, "", 0, other, (), None))


@pytest.mark.parametrize("verbose", [["lightning"], "lightning", True])
def test_hydra_verbose_brings_a_library_back(levels, verbose, monkeypatch):
    HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"verbose": verbose}})
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")  # a user's own setting wins
    quiet_third_parties()
    assert levels["lightning.pytorch"].level == logging.INFO
    assert levels["optuna"].level == (logging.INFO if verbose is True else logging.WARNING)
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
