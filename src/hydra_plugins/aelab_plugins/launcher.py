"""`hydra/launcher=processes` (or `joblib`): see `aelab.sweeps.launcher`."""

from aelab.sweeps.launcher import ProcessLauncher


class JobProcessLauncher(ProcessLauncher):
    """Jobs in processes of their own, under the name Hydra registers."""
