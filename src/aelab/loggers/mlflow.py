"""Lightning's MLflow logger with a store of its own in the run folder by default.

MLflow's file store is closed for new runs since MLflow 3, so configs/logger/mlflow.yaml's
default `tracking_uri` is a SQLite database `<run>/mlflow/mlflow.db`; here its folder is made
and the artifacts (images, the config) kept beside it, which Lightning cannot be told. `mlflow
ui --backend-store-uri sqlite:///<run>/mlflow/mlflow.db` shows the run. Any tracking URI
(`http://host:5000`, `databricks`) can be given instead.
"""

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from aelab.loggers.extras import require
from aelab.loggers.media import ArrayImages
from aelab.loggers.runs import job_name

SQLITE = "sqlite:///"


class MLFlowLogger(ArrayImages, LightningMLFlowLogger):
    """Metrics, hyperparameters, images and the config of a run in MLflow; Lightning's
    arguments, but `run_name` null: in a multirun, the overrides that tell its jobs apart
    (`latent_dim=8`, as in TensorBoard), else MLflow's own; `artifact_location` null with a
    SQLite store: `artifacts/` beside the database."""

    def __init__(
        self, run_name: str | None = None, artifact_location: str | None = None, **kwargs: Any
    ) -> None:
        require("mlflow", "mlflow", "logger=mlflow")
        uri = kwargs.get("tracking_uri") or ""
        if uri.startswith(SQLITE):
            database = Path(uri.removeprefix(SQLITE)).absolute()
            database.parent.mkdir(parents=True, exist_ok=True)
            kwargs["tracking_uri"] = f"{SQLITE}{database}"
            artifact_location = artifact_location or str(database.parent / "artifacts")
        super().__init__(
            run_name=run_name or job_name(), artifact_location=artifact_location, **kwargs
        )

    @rank_zero_only
    def log_config(self, config_yaml: str, git: dict[str, Any]) -> None:
        """The run's composed config as the artifact `config.yaml`, its commit as tags."""
        self.experiment.log_text(self.run_id, config_yaml, "config.yaml")
        if git.get("commit"):
            self.experiment.set_tag(self.run_id, "git_commit", git["commit"])
            self.experiment.set_tag(self.run_id, "git_dirty", str(bool(git.get("dirty"))))

    def log_array(self, tag: str, array: np.ndarray, step: int) -> None:
        """A keyed image with a step (the run's Artifacts, under `images/`)."""
        self.experiment.log_image(self.run_id, array, key=tag, step=step)
