"""Lightning's MLflow logger with a store of its own in the run folder by default.

MLflow's file store is closed for new runs since MLflow 3, so the default is a SQLite database
`<save_dir>/mlflow.db` with the artifacts (images, the config) beside it; `mlflow ui
--backend-store-uri sqlite:///<run>/mlflow/mlflow.db` shows the run. Any tracking URI
(`http://host:5000`, `databricks`) can be given instead.
"""

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from aelab.loggers.extras import require
from aelab.loggers.hparams import SINGLE_RUN, run_name


class MLFlowLogger(LightningMLFlowLogger):
    """Metrics, hyperparameters, images and the config of a run in MLflow.

    `tracking_uri` null: the SQLite store in `save_dir`; `run_name` null: in a multirun, the
    overrides that tell its jobs apart (`latent_dim=8`, as in TensorBoard), else MLflow's own.
    """

    def __init__(
        self,
        save_dir: str,
        experiment_name: str = "aelab",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: bool = False,
    ) -> None:
        require("mlflow", "mlflow", "logger=mlflow")
        artifact_location = None
        if not tracking_uri:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{Path(save_dir).absolute() / 'mlflow.db'}"
            artifact_location = str(Path(save_dir).absolute() / "artifacts")
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or _sweep_name(),
            tracking_uri=tracking_uri,
            tags=tags,
            save_dir=None,
            log_model=log_model,
            artifact_location=artifact_location,
        )

    @rank_zero_only
    def log_config(self, config_yaml: str, git: dict[str, Any]) -> None:
        """The run's composed config as the artifact `config.yaml`, its commit as tags."""
        self.experiment.log_text(self.run_id, config_yaml, "config.yaml")
        if git.get("commit"):
            self.experiment.set_tag(self.run_id, "git_commit", git["commit"])
            self.experiment.set_tag(self.run_id, "git_dirty", str(bool(git.get("dirty"))))


def _sweep_name() -> str | None:
    name = run_name()
    return None if name == SINGLE_RUN else name
