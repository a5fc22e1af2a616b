"""Lightning's TensorBoard logger, laid out for comparing runs at a glance.

- The run folder (`<run>/<version>/`) is named by what tells a multirun's jobs apart
  (`aelab.loggers.hparams.run_name`): `0/latent_dim=2`, `1/latent_dim=8` in the run list.
- HParams: the run's session lives in the run itself, so that each training is one run in
  every tab. TensorBoard takes the last value of each of a session's scalars as its metric
  values; the tested checkpoint's metrics are logged once at the last step as `final/val/loss`,
  `final/test/loss`, ... (the names MLflow and CSV get), its columns beside the curves' last
  values. No experiment summary is written: TensorBoard then builds the table from all
  sessions it sees (one summary would hide the columns of every other kind of run) and puts
  the hyperparameters that differ first. The "Trial ID" starts with what tells runs apart
  (`trial_id`), since the table shows only its first characters.
- Custom Scalars: one chart per loss term with its `train/` and `val/` curves, one for the
  learning rate when it is logged, made from the names as they are logged.
- Text: the run's config; Graphs: the network, traced once at start-up.
- Lightning's `epoch` scalar (the step-to-epoch mapping) is logged as `trainer/epoch`, out of
  the way of the losses.
"""

import re
import time
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
from torch.utils.tensorboard.summary import custom_scalars

from aelab.loggers.hparams import SINGLE_RUN, run_name
from aelab.loggers.runs import FINAL
from aelab.models.stages import TRAIN, VAL

# a run folder's name: `<stamp>_<overrides>`
STAMP = re.compile(r"(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)_?(.*)")
EPOCH = "trainer/epoch"  # where Lightning's `epoch` scalar goes
LR_CHART = "learning rate"
LR_TAGS = (r"^lr$", r"^lr-")  # the model's `lr` (with a scheduler), LearningRateMonitor's


class TensorBoardLogger(LightningTensorBoardLogger):
    """Events in `<save_dir>/<name>/<version>/`; `version` null names the run by its sweep's
    overrides (`tensorboard` in a single run). `log_graph` traces the network once at start-up
    (skipped under `model.compile=true`); false for a network that does not trace."""

    def __init__(
        self, save_dir: str, name: str = "", version: str | None = None, log_graph: bool = True
    ) -> None:
        super().__init__(
            save_dir,
            name=name,
            version=version or run_name(),
            log_graph=log_graph,
            default_hp_metric=False,
        )
        self._session_started = False
        self._graph_logged = False
        self._charts: set[str] = set()

    @rank_zero_only
    def log_hyperparams(
        self,
        params: Mapping[str, Any] | Namespace,
        metrics: Mapping[str, float] | None = None,
        step: int | None = None,
    ) -> None:
        """Start the run's HParams session with `params`, a flat dict of what runs are
        compared by (only the first call: TensorBoard reads a session's first record); kept as
        `hparams.yaml` beside the events too. `metrics` are final metrics (`log_final_metrics`)."""
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        self.hparams.update(params)
        if not self._session_started:
            # integers as text: HParams shows every number as a float (`128.00`)
            values = {
                name: value if isinstance(value, bool | float | str) else str(value)
                for name, value in params.items()
                if value is not None
            }
            trial = trial_id(Path(self.log_dir))
            self.experiment.file_writer.add_summary(summary_v2.hparams_pb(values, trial), 0)
            self._session_started = True
        if metrics:
            self.log_final_metrics(metrics, step)

    @rank_zero_only
    def log_final_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """The run's final metrics (those of the tested checkpoint) as `final/<name>` at
        `step`, one point each, and the HParams session's end."""
        for name, value in metrics.items():
            self.experiment.add_scalar(FINAL + name, value, step)
        end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
        )
        content = plugin_data_pb2.HParamsPluginData(session_end_info=end)
        summary = _hparams_summary(metadata.SESSION_END_INFO_TAG, content)
        self.experiment.file_writer.add_summary(summary, step)
        self.experiment.flush()

    @rank_zero_only
    def log_config(self, config_yaml: str, git: Mapping[str, Any]) -> None:
        """The run's composed config in the Text tab, as a YAML block under the commit it ran."""
        commit, dirty = git.get("commit"), git.get("dirty")
        header = [f"commit `{commit}`" + (" with uncommitted changes" if dirty else "")]
        text = "\n\n".join([*(header if commit else []), f"```yaml\n{config_yaml}```"])
        self.experiment.add_text("config", text, 0)

    @rank_zero_only
    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A (C, H, W) image with values in [0, 1] in the Images tab (`aelab.loggers.media`)."""
        self.experiment.add_image(tag, image, step)

    @rank_zero_only
    def add_figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure in the Images tab, left open for the other loggers."""
        self.experiment.add_figure(tag, figure, step, close=False)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {EPOCH if name == "epoch" else name: value for name, value in metrics.items()}
        super().log_metrics(metrics, step)
        self._update_layout(metrics, step)

    def _update_layout(self, names: Mapping[str, Any], step: int | None) -> None:
        """Rewrite the custom-scalars layout when a new term (or the learning rate) appears."""
        charts = set(self._charts)
        for name in names:
            stage, _, term = name.partition("/")
            if stage in (TRAIN, VAL) and term:
                charts.add(term)
            elif any(re.match(tag, name) for tag in LR_TAGS):
                charts.add(LR_CHART)
        if charts == self._charts:
            return
        self._charts = charts
        terms = sorted(charts - {LR_CHART}, key=lambda term: (term != "loss", term))
        layout = {
            f"{TRAIN} and {VAL}": {
                term: ["Multiline", [f"^{stage}/{re.escape(term)}$" for stage in (TRAIN, VAL)]]
                for term in terms
            }
        }
        if LR_CHART in charts:
            layout[LR_CHART] = {"lr": ["Multiline", list(LR_TAGS)]}
        self.experiment.file_writer.add_summary(custom_scalars(layout), step)

    @rank_zero_only
    # Lightning passes the LightningModule it trains, whose hparams this reads
    def log_graph(self, model: L.LightningModule, input_array: Any = None) -> None:  # type: ignore[override]
        """Trace the network once (Lightning asks again before testing) on the model's example
        input (a blank image), in eval mode and on a forked random stream so that training is
        not changed by it."""
        if not self._log_graph or self._graph_logged or getattr(model, "compile_modules", False):
            return
        self._graph_logged = True
        if input_array is None:
            input_array = model.example_input_array
        if input_array is None:
            return
        training = model.training
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
                # add_graph is built on torch.jit.trace, which torch now calls deprecated
                warnings.filterwarnings("ignore", "`torch.jit.trace", FutureWarning)
                model.eval()
                self.experiment.add_graph(model, input_array.to(model.device))
        except Exception as err:
            reason = " ".join(str(err).split())[:200]
            rank_zero_warn(
                f"the network is not in TensorBoard's Graphs tab: tracing it failed ({reason}); "
                "logger.tensorboard.log_graph=false skips it"
            )
        finally:
            model.train(training)


def trial_id(log_dir: Path) -> str:
    """HParams' "Trial ID" of the run logging to `log_dir`, what tells it apart first:
    `model-vae+data-fashion 2026-12-06_16-52-12` for a single run
    (`<stamp>_<overrides>/tensorboard`), `latent_dim=2 2026-12-06_11-49-55/0` for a multirun's
    job (`<sweep stamp>/<job>/<name>`). Unique per run: runs with one ID are one group."""
    parent = log_dir.parent
    if log_dir.name != SINGLE_RUN:
        return f"{log_dir.name} {parent.parent.name}/{parent.name}"
    found = STAMP.fullmatch(parent.name)
    if found and found.group(2):
        return f"{found.group(2)} {found.group(1)}"
    # a sweep's job that varies nothing (`<sweep stamp>/0`), a folder named by hydra.run.dir
    return f"{parent.parent.name}/{parent.name}" if parent.name.isdigit() else parent.name


def _hparams_summary(tag: str, content: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(
        value=[
            Summary.Value(
                tag=tag,
                metadata=metadata.create_summary_metadata(content),
                tensor=metadata.NULL_TENSOR,
            )
        ]
    )
