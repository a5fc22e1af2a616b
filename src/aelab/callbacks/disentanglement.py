"""Disentanglement while training: the metrics and a traversal labelled by factor, on data with
ground-truth factors (data=shapes, data=dsprites)."""

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import lightning as L

from aelab.data import to_float
from aelab.errors import ConfigError
from aelab.evaluation.disentanglement import DisentanglementReport
from aelab.evaluation.ground_truth import ground_truth, metric_budget, model_disentanglement
from aelab.evaluation.traversals import factor_traversal, information_figure
from aelab.loggers.media import log_figure, log_image, takes_images

if TYPE_CHECKING:
    from aelab.models import AutoencoderModule

log = logging.getLogger(__name__)
KEY = "callbacks.disentanglement"


class DisentanglementMetrics(L.Callback):
    """Every `every_n_epochs` validation epochs, on rank 0: MIG, DCI, SAP and the FactorVAE
    score of the codes on the datamodule's ground-truth set, each drawing `points` (the fields
    of MetricBudget; the rest keep its defaults; about a second on a CPU as configured), logged
    as `val/mig`,
    `val/dci_disentanglement`, ...; and, for every logger that shows images:

    - `val/factor_traversal`: one row per latent dimension (at most `max_rows`), the most used
      first (the KL of q(z|x) against N(0, I) on `kl_images` validation images; the codes'
      variance for a model without a Gaussian posterior), swept over [-span, span] in `steps`
      from the first validation image's code, each row labelled with the factor it is most
      informative about (normalised mutual information) and its KL;
    - `val/mutual_information`: that matrix as a heat map, in the same order.

    `enabled`: null, on when the data has factors and silent when it has none; true, also one
    line when it has none; false, off.
    """

    def __init__(
        self,
        enabled: bool | None = None,
        every_n_epochs: int = 1,
        points: Mapping[str, int] | None = None,
        seed: int = 0,
        kl_images: int = 256,
        steps: int = 10,
        span: float = 3.0,
        max_rows: int = 20,
    ) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("kl_images", kl_images)):
            if value < 1:
                raise ConfigError(f"{KEY}.{key}={value}: must be at least 1")
        if steps < 2 or max_rows < 1:
            raise ConfigError(f"{KEY}.steps={steps}, max_rows={max_rows}: need 2 and 1 at least")
        self.enabled = enabled
        self.every_n_epochs = every_n_epochs
        self.budget = metric_budget("cpu", points, KEY)
        self.seed = seed
        self.kl_images = kl_images
        self.steps = steps
        self.span = span
        self.max_rows = max_rows
        self.active = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        has_factors = ground_truth(datamodule) is not None
        self.active = self.enabled is not False and has_factors
        if not trainer.is_global_zero:
            return
        if self.enabled and not has_factors:
            name = getattr(datamodule, "name", "this data")
            log.warning(
                f"{KEY}.enabled=true, but {name} has no ground-truth factors: no val/mig and no "
                "traversal by factor (data=shapes and data=dsprites have them)"
            )
        latent_dim = getattr(pl_module, "latent_dim", 2)
        if self.active and latent_dim < 2:
            log.info(f"{latent_dim}-d codes: no disentanglement metrics (they need 2 or more)")
            self.active = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        model = cast("AutoencoderModule", pl_module)  # the callback serves aelab's models
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by fit(datamodule=)
        data = ground_truth(datamodule)
        assert data is not None, "on_fit_start found the ground truth"
        report = model_disentanglement(model, data, self.budget, self.seed, show=False)
        assert report is not None, "on_fit_start turned the callback off for 1-d codes"
        for name, value in report.scores.items():
            model.log(f"val/{name}", value, rank_zero_only=True)
        loggers = [lg for lg in trainer.loggers if takes_images(lg)]
        if loggers:
            self._log_pictures(trainer, model, datamodule, report)

    def _log_pictures(
        self,
        trainer: L.Trainer,
        model: "AutoencoderModule",
        datamodule: object,
        report: DisentanglementReport,
    ) -> None:
        images = datamodule.val_set.images[: self.kl_images]  # type: ignore[attr-defined]
        x = to_float(images.to(model.device))
        grid, rows = factor_traversal(
            model,
            x,
            report.mutual_information,
            report.factor_names,
            self.steps,
            self.span,
            self.max_rows,
        )
        step = trainer.global_step
        log_image(trainer.loggers, "val/factor_traversal", grid, step)
        figure = information_figure(report.mutual_information, report.factor_names, rows)
        log_figure(trainer.loggers, "val/mutual_information", figure, step)
