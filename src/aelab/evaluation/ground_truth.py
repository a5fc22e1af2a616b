"""A model's disentanglement on its datamodule's ground-truth factors: the metrics of
aelab.evaluation.disentanglement computed from `model.encode` (the posterior mean for a VAE),
the number of points each draws (a named budget with overrides), and how much each latent
dimension is used (the per-dimension KL of q(z|x), or the codes' variance), which orders a
traversal's rows."""

import logging
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from aelab.data import to_float
from aelab.errors import ConfigError
from aelab.evaluation.disentanglement import (
    PAPER_BUDGET,
    DisentanglementReport,
    Encode,
    GroundTruth,
    MetricBudget,
    codes_lookup,
    disentanglement_metrics,
    normalised_mutual_information,
)
from aelab.evaluation.progress import Advance, no_progress, phase
from aelab.models import VAE, AutoencoderModule

log = logging.getLogger(__name__)

BUDGETS = {"cpu": MetricBudget(), "paper": PAPER_BUDGET}
METRIC_NAMES = (
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "factor_vae_score",
)


def ground_truth(datamodule: Any) -> GroundTruth | None:
    """The datamodule's ground-truth set (every image with its factors), after `setup`; None
    for data without factors."""
    return getattr(datamodule, "ground_truth", None)


def metric_budget(name: str, points: Mapping[str, int] | None, key: str) -> MetricBudget:
    """The budget `name` (cpu: MetricBudget's defaults; paper: disentanglement_lib's study's
    counts) with the counts in `points` replaced; one ConfigError line naming `key` for an
    unknown budget or field."""
    if name not in BUDGETS:
        raise ConfigError(f"{key}.budget={name!r}: must be one of {', '.join(BUDGETS)}")
    if points is None:
        return BUDGETS[name]
    if not isinstance(points, Mapping):
        raise ConfigError(
            f"{key}.points={points!r}: must be null or a mapping such as {{mig_points: 2000}}"
        )
    allowed = [f.name for f in fields(MetricBudget)]
    unknown = [field for field in points if field not in allowed]
    if unknown:
        raise ConfigError(
            f"{key}.points: {', '.join(unknown)} is not a count of the metrics; they are "
            f"{', '.join(allowed)}"
        )
    small = [f"{field}={value}" for field, value in points.items() if int(value) < 1]
    if small:
        raise ConfigError(f"{key}.points: {', '.join(small)} must be at least 1")
    return replace(BUDGETS[name], **{field: int(value) for field, value in points.items()})


def model_encoder(model: AutoencoderModule, advance: Advance = no_progress) -> Encode:
    """`encode` for the metrics: uint8 images (n, C, H, W) as floats on the model's device,
    through `model.encode`, to (n, D) codes on the CPU."""

    @torch.no_grad()
    def encode(images: np.ndarray) -> np.ndarray:
        x = to_float(torch.from_numpy(np.ascontiguousarray(images)).to(model.device))
        codes = model.encode(x).flatten(1).float().cpu().numpy()
        advance(len(images))
        return codes

    return encode


def model_disentanglement(
    model: AutoencoderModule,
    data: GroundTruth,
    budget: MetricBudget,
    seed: int,
    show: bool = True,
) -> DisentanglementReport | None:
    """The metrics of the model's codes, encoded in batches on its device (a progress phase
    over the images encoded); None, with one line, for codes of one dimension (MIG, DCI and
    SAP compare dimensions)."""
    if model.latent_dim < 2:
        log.info(f"{model.latent_dim}-d codes: no disentanglement metrics (they need 2 or more)")
        return None
    model.eval()
    encoded = min(budget.images(), len(data.images))
    with phase("disentanglement metrics", encoded, "images encoded", show) as advance:
        return disentanglement_metrics(model_encoder(model, advance), data, budget, seed)


def factor_information(
    model: AutoencoderModule, data: GroundTruth, points: int, bins: int, seed: int
) -> np.ndarray:
    """(D, F): each code dimension's normalised mutual information with each factor, as MIG
    computes it, from `points` images drawn uniformly over the factors (no other metric)."""
    model.eval()
    rng = np.random.default_rng(seed)
    codes_of = codes_lookup(model_encoder(model), data, points)
    factors = data.sample_factors(points, rng)
    return normalised_mutual_information(codes_of(factors), factors, bins)


@torch.no_grad()
def latent_spread(model: AutoencoderModule, x: torch.Tensor) -> tuple[np.ndarray, str]:
    """How much each latent dimension is used on the float images `x`, and the measure's
    name: "KL", the mean KL(q(z_d|x) || N(0, 1)) in nats, for a model whose code is its
    Gaussian posterior's mean (the VAE's encode); else "var", the codes' variance."""
    model.eval()
    if isinstance(model, VAE) and type(model).encode is VAE.encode:
        mu, logvar = model.posterior(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(0)
        return kl.float().cpu().numpy(), "KL"
    codes = model.encode(x).flatten(1).float()
    return codes.var(0, unbiased=len(codes) > 1).cpu().numpy(), "var"
