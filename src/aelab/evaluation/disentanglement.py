"""Disentanglement metrics on a ground-truth dataset: MIG, DCI, SAP and the FactorVAE score.

Each follows the definition in google-research/disentanglement_lib (Locatello et al., 2019;
Apache-2.0), re-written here with numpy and scikit-learn: the estimator, the predictors and the
constants are theirs, and each function names the file it follows. Codes are (N, D) floats (the
posterior means for a VAE), factors (N, F) integer class indices. `disentanglement_metrics`
draws the points from a ground-truth set, encodes them and computes every metric.
"""

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

Encode = Callable[[np.ndarray], np.ndarray]  # uint8 images (n, C, H, W) -> codes (n, D)
CodesOf = Callable[[np.ndarray], np.ndarray]  # factors (n, F) -> codes (n, D) of such images


class GroundTruth(Protocol):
    """What the metrics need of a ground-truth set (aelab.data.factors.FactorImages is one):
    its images, each factor's name and number of values, uniform factor vectors, and the row of
    the image with given factor values."""

    @property
    def images(self) -> np.ndarray: ...

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def sizes(self) -> tuple[int, ...]: ...

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def index(self, factors: np.ndarray) -> np.ndarray: ...


def discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each code dimension cut into `bins` equal-width bins over its own range (labels 1..bins;
    disentanglement_lib's metrics/utils.py `_histogram_discretize`)."""
    columns = [np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in np.asarray(codes).T]
    return np.stack(columns, axis=1)


def normalised_mutual_information(
    codes: np.ndarray, factors: np.ndarray, bins: int = 20
) -> np.ndarray:
    """(D, F): the mutual information between each discretized code dimension and each factor,
    divided by the factor's entropy (both in nats, from the sample's frequencies): 1 when the
    dimension determines the factor, 0 when it says nothing of it (metrics/mig.py)."""
    binned = discretize(codes, bins)
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    if (entropy == 0).any():
        constant = int(np.argmin(entropy))
        raise ValueError(f"factor {constant} takes one value in the sample: it has no entropy")
    mi = np.array([[mutual_info_score(f, c) for f in factors.T] for c in binned.T])
    return mi / entropy


def mutual_information_gap(normalised_mi: np.ndarray) -> float:
    """MIG (Chen et al., 2018): per factor, the gap between the two code dimensions that know
    most about it (normalised mutual information), averaged over factors (metrics/mig.py)."""
    if normalised_mi.shape[0] < 2:
        raise ValueError("MIG needs at least 2 code dimensions")
    top = np.sort(normalised_mi, axis=0)
    return float(np.mean(top[-1] - top[-2]))


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """The mutual information gap of `codes` about `factors` (disentanglement_lib's estimator:
    20 histogram bins per dimension)."""
    return mutual_information_gap(normalised_mutual_information(codes, factors, bins))


@dataclass(frozen=True)
class Dci:
    """Eastwood & Williams (2018): how much each code dimension serves one factor only
    (disentanglement), each factor is captured by one dimension (completeness), and the codes
    predict the factors (informativeness: test accuracy of the predictor; `_train` on its
    training points). `importance` (D, F) is the predictor's feature importance."""

    disentanglement: float
    completeness: float
    informativeness: float
    informativeness_train: float
    importance: np.ndarray


def dci(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    trees: int = 10,
    seed: int = 0,
) -> Dci:
    """DCI with disentanglement_lib's predictor (metrics/dci.py): per factor, scikit-learn's
    GradientBoostingClassifier (depth-3 trees, learning rate 0.1) on all code dimensions; its
    impurity-based feature importances make the importance matrix, its test accuracy the
    informativeness. disentanglement_lib uses 100 trees; `trees` makes it cheaper."""
    importance = np.zeros((train_codes.shape[1], train_factors.shape[1]))
    train_accuracy, test_accuracy = [], []
    for j in range(train_factors.shape[1]):
        model = GradientBoostingClassifier(n_estimators=trees, random_state=seed)
        model.fit(train_codes, train_factors[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        train_accuracy.append(np.mean(model.predict(train_codes) == train_factors[:, j]))
        test_accuracy.append(np.mean(model.predict(test_codes) == test_factors[:, j]))
    return Dci(
        *dci_from_importance(importance),
        float(np.mean(test_accuracy)),
        float(np.mean(train_accuracy)),
        importance,
    )


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """DCI's disentanglement and completeness of a (D, F) importance matrix (metrics/dci.py)."""
    return _weighted_specificity(importance), _weighted_specificity(importance.T)


def _weighted_specificity(importance: np.ndarray) -> float:
    """Per row, 1 - the entropy (base: the number of columns) of its importances as a
    distribution, weighted by the row's share of all importance."""
    rows, columns = importance.shape
    if rows < 2 or columns < 2:
        raise ValueError(f"DCI needs at least 2 code dimensions and 2 factors, not {rows, columns}")
    p = importance + 1e-11
    p = p / p.sum(axis=1, keepdims=True)
    specificity = 1 + (p * np.log(p)).sum(axis=1) / math.log(columns)
    weight = importance.sum(axis=1) if importance.sum() > 0 else np.ones(rows)
    return float(np.sum(specificity * weight / weight.sum()))


def sap_matrix(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    continuous: bool = False,
) -> np.ndarray:
    """(D, F): how well each code dimension alone predicts each factor (metrics/sap_score.py).
    Discrete factors (its default): test accuracy of a linear SVM (LinearSVC, C=0.01, balanced
    classes) on the one dimension; continuous: the squared correlation on the training set."""
    scores = np.zeros((train_codes.shape[1], train_factors.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # C=0.01 is part of the definition
        for i in range(train_codes.shape[1]):
            code, test_code = train_codes[:, i : i + 1], test_codes[:, i : i + 1]
            for j in range(train_factors.shape[1]):
                if continuous:
                    scores[i, j] = _squared_correlation(code[:, 0], train_factors[:, j])
                    continue
                svm = LinearSVC(C=0.01, class_weight="balanced")
                svm.fit(code, train_factors[:, j])
                scores[i, j] = np.mean(svm.predict(test_code) == test_factors[:, j])
    return scores


def _squared_correlation(code: np.ndarray, factor: np.ndarray) -> float:
    """cov^2 / (var var); 0 for a dimension that does not vary."""
    cov = np.cov(code, factor, ddof=1)
    return 0.0 if cov[0, 0] <= 1e-12 else float(cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]))


def sap(scores: np.ndarray) -> float:
    """SAP (Kumar et al., 2018): per factor, the gap between the two dimensions that predict it
    best (sap_matrix), averaged over factors."""
    top = np.sort(scores, axis=0)
    return float(np.mean(top[-1] - top[-2]))


@dataclass(frozen=True)
class FactorVaeScore:
    """Kim & Mnih (2018): accuracy of the majority-vote classifier that names the fixed factor
    from the code dimension of least normalised variance, on its training and on fresh votes;
    `active_dims`: the dimensions that were not pruned as collapsed."""

    train_accuracy: float
    eval_accuracy: float
    active_dims: int


def factor_vae_score(
    codes_of: CodesOf,
    data: GroundTruth,
    rng: np.random.Generator,
    batch_size: int = 64,
    train_votes: int = 500,
    eval_votes: int = 250,
    variance_points: int = 5000,
    prune_below: float = 0.05,
) -> FactorVaeScore:
    """The FactorVAE score as disentanglement_lib computes it (metrics/factor_vae.py, with its
    study's prune_dims.threshold=0.05): each dimension's variance within a batch of
    `batch_size` images that share one factor's value (the rest drawn at random from the whole
    set), divided by its variance over `variance_points` random images; dimensions whose
    standard deviation is below `prune_below` are collapsed and left out."""
    variance = np.var(codes_of(data.sample_factors(variance_points, rng)), axis=0, ddof=1)
    active = np.flatnonzero(np.sqrt(variance) >= prune_below)
    if len(active) == 0:
        return FactorVaeScore(0.0, 0.0, 0)
    train = _votes(codes_of, data, rng, batch_size, train_votes, variance, active)
    test = _votes(codes_of, data, rng, batch_size, eval_votes, variance, active)
    classifier = np.argmax(train, axis=0)  # each dimension's factor
    columns = np.arange(len(active))
    return FactorVaeScore(
        float(train[classifier, columns].sum() / train.sum()),
        float(test[classifier, columns].sum() / test.sum()),
        len(active),
    )


def _votes(
    codes_of: CodesOf,
    data: GroundTruth,
    rng: np.random.Generator,
    batch_size: int,
    votes: int,
    variance: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    """(F, active dims) counts: for each of `votes` batches with one random factor fixed, the
    (fixed factor, dimension of least normalised variance) pair; drawn 256 batches at a time."""
    counts = np.zeros((len(data.sizes), len(active)), dtype=np.int64)
    for start in range(0, votes, 256):
        n = min(256, votes - start)
        fixed = rng.integers(len(data.sizes), size=n)
        factors = data.sample_factors(n * batch_size, rng).reshape(n, batch_size, -1)
        factors[np.arange(n), :, fixed] = factors[np.arange(n), :1, fixed]
        codes = codes_of(factors.reshape(n * batch_size, -1)).reshape(n, batch_size, -1)
        local = np.var(codes[:, :, active], axis=1, ddof=1) / variance[active]
        np.add.at(counts, (fixed, np.argmin(local, axis=1)), 1)
    return counts


@dataclass(frozen=True)
class MetricBudget:
    """How many points each metric draws from the ground-truth set. The defaults fit a CPU
    (docs/experiments.md says how long they take); PAPER_BUDGET holds the counts of
    disentanglement_lib's study (Locatello et al., 2019)."""

    mig_points: int = 10_000
    bins: int = 20
    dci_train: int = 2_000
    dci_test: int = 1_000
    dci_trees: int = 10
    sap_train: int = 5_000
    sap_test: int = 2_500
    factor_vae_batch: int = 64
    factor_vae_train: int = 500
    factor_vae_eval: int = 250
    factor_vae_variance: int = 5_000

    def images(self) -> int:
        """How many images the metrics encode together."""
        votes = (self.factor_vae_train + self.factor_vae_eval) * self.factor_vae_batch
        drawn = self.dci_train + self.dci_test + self.sap_train + self.sap_test
        return self.mig_points + drawn + votes + self.factor_vae_variance


PAPER_BUDGET = MetricBudget(
    dci_train=10_000,
    dci_test=5_000,
    dci_trees=100,
    sap_train=10_000,
    sap_test=5_000,
    factor_vae_train=10_000,
    factor_vae_eval=5_000,
    factor_vae_variance=10_000,
)


@dataclass(frozen=True)
class DisentanglementReport:
    """`scores`: mig, dci_disentanglement, dci_completeness, dci_informativeness, sap and
    factor_vae_score (the evaluation accuracy); `mutual_information` (D, F): each code
    dimension's normalised mutual information with each factor (named by `factor_names`), which
    labels a traversal's rows."""

    scores: dict[str, float]
    mutual_information: np.ndarray
    factor_names: tuple[str, ...]


def codes_lookup(encode: Encode, data: GroundTruth, needed: int, batch_size: int = 1024) -> CodesOf:
    """The codes of the images with given factors: encoded once for the whole set when the
    metrics need at least as many images as it holds (the generated shapes), else encoded as
    they are drawn (dSprites' 737,280 images), `batch_size` at a time."""
    images = data.images
    if needed >= len(images):
        every = _encode_rows(encode, images, np.arange(len(images)), batch_size)
        return lambda factors: every[data.index(factors)]
    return lambda factors: _encode_rows(encode, images, data.index(factors), batch_size)


def _encode_rows(encode: Encode, images: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    codes = [encode(images[rows[start : start + size]]) for start in range(0, len(rows), size)]
    return np.concatenate([np.asarray(c, dtype=np.float64) for c in codes])


def disentanglement_metrics(
    encode: Encode,
    data: GroundTruth,
    budget: MetricBudget = MetricBudget(),
    seed: int = 0,
    batch_size: int = 1024,
) -> DisentanglementReport:
    """MIG, DCI, SAP and the FactorVAE score of the codes `encode` gives the images of `data`,
    each on its own uniform draw of factor values (as disentanglement_lib draws them), from one
    seeded generator: the same seed, encoder and set give the same numbers."""
    rng = np.random.default_rng(seed)
    codes_of = codes_lookup(encode, data, budget.images(), batch_size)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        factors = data.sample_factors(n, rng)
        return codes_of(factors), factors

    nmi = normalised_mutual_information(*draw(budget.mig_points), budget.bins)
    dci_train, dci_test = draw(budget.dci_train), draw(budget.dci_test)
    dcis = dci(*dci_train, *dci_test, trees=budget.dci_trees, seed=seed)
    sap_scores = sap_matrix(*draw(budget.sap_train), *draw(budget.sap_test))
    factor_vae = factor_vae_score(
        codes_of,
        data,
        rng,
        budget.factor_vae_batch,
        budget.factor_vae_train,
        budget.factor_vae_eval,
        budget.factor_vae_variance,
    )
    scores = {
        "mig": mutual_information_gap(nmi),
        "dci_disentanglement": dcis.disentanglement,
        "dci_completeness": dcis.completeness,
        "dci_informativeness": dcis.informativeness,
        "sap": sap(sap_scores),
        "factor_vae_score": factor_vae.eval_accuracy,
    }
    return DisentanglementReport(scores, nmi, tuple(data.names))
