"""`hydra/sweeper=optuna`: see `aelab.sweeps.optuna`."""

from aelab.sweeps.optuna import OptunaSearch


class OptunaSweeper(OptunaSearch):
    """The Optuna search under the name Hydra registers."""
