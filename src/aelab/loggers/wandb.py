"""Lightning's Weights & Biases logger, offline unless an API key is configured.

So that a run never blocks on a login prompt: `mode` null takes `WANDB_MODE` when it is set,
else `online` when W&B has an API key (`WANDB_API_KEY`, or the netrc entry `wandb login`
writes), else `offline`: the run is kept in `<run>/wandb/offline-run-*/`, to upload later with
`wandb sync`. Every other setting is Lightning's (or `wandb.init`'s) argument, given in
configs/logger/wandb.yaml.
"""

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from aelab.errors import ConfigError
from aelab.loggers.extras import require
from aelab.loggers.media import ArrayImages
from aelab.loggers.runs import job_name

Mode = Literal["online", "offline", "disabled"]
# WANDB_MODE's values, with W&B's old names `dryrun` and `run`
MODES: dict[str, Mode] = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}


class WandbLogger(ArrayImages, LightningWandbLogger):
    """Metrics, hyperparameters, images and the config of a run in W&B (see the module's
    docstring for `mode`); `name` null: in a multirun, the overrides that tell its jobs apart."""

    def __init__(
        self,
        name: str | None = None,
        mode: Mode | None = None,
        log_model: bool | Literal["all"] = False,
        **kwargs: Any,
    ) -> None:
        require("wandb", "wandb", "logger=wandb")
        mode = mode or wandb_mode()
        if log_model and mode != "online":
            raise ConfigError(
                f"logger.wandb.log_model={log_model!r} needs an online run; this one is {mode} "
                "(set WANDB_API_KEY or run `wandb login`)"
            )
        super().__init__(name=name or job_name(), mode=mode, log_model=log_model, **kwargs)

    @rank_zero_only
    def log_config(self, config_yaml: str, git: dict[str, Any]) -> None:
        """The run's composed config as its file `config.yaml` (what lies in the run's `dir` is
        uploaded with it; W&B records the commit itself)."""
        (Path(self.experiment.dir) / "config.yaml").write_text(config_yaml)

    @rank_zero_only
    def log_final_metrics(self, metrics: dict[str, float], step: int) -> None:
        """The tested checkpoint's metrics as the run's summary: what W&B's runs table shows."""
        self.experiment.summary.update(metrics)

    def log_array(self, tag: str, array: np.ndarray, step: int) -> None:
        """The run's media."""
        self.log_image(key=tag, images=[array], step=step)

    def end_run(self, failed: bool) -> None:
        """Finish the W&B run, which stays open in its process otherwise."""
        self.experiment.finish(exit_code=1 if failed else 0)


def wandb_mode() -> Mode:
    """`WANDB_MODE` if set, else online when an API key is configured, else offline."""
    env = os.environ.get("WANDB_MODE")
    if env:
        if env not in MODES:
            raise ConfigError(f"WANDB_MODE={env!r} is not allowed; use online, offline or disabled")
        return MODES[env]
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """Whether W&B would log in without asking: WANDB_API_KEY, or a netrc entry for its host.
    W&B offers no public call that answers this without prompting, hence these few lines."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])
