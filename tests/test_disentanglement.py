"""The disentanglement metrics on codes whose answer is known: the factors themselves, a rotation
of them, noise, one dimension carrying two factors, and hand-computed tiny cases."""

import math

import numpy as np
import pytest

from aelab.data.factors import FactorImages
from aelab.evaluation.disentanglement import (
    PAPER_BUDGET,
    MetricBudget,
    codes_lookup,
    dci,
    dci_from_importance,
    disentanglement_metrics,
    factor_vae_score,
    mig,
    mutual_information_gap,
    normalised_mutual_information,
    sap,
    sap_matrix,
)

SIZES = (3, 6, 10, 16)
ROTATION = np.linalg.qr(np.random.default_rng(7).normal(size=(4, 4)))[0]


def draw(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(s, size=n) for s in SIZES], axis=1)


def as_codes(kind: str, factors: np.ndarray) -> np.ndarray:
    """Codes of a known quality: the factors themselves, a random rotation of them (centred
    and scaled, so that no factor dominates), noise, or the first and last factor in one
    dimension (the last dimension then noise)."""
    rng = np.random.default_rng(len(factors))
    if kind == "factors":
        return factors.astype(np.float64)
    if kind == "rotated":
        return (factors / np.array(SIZES) - 0.5) @ ROTATION
    if kind == "noise":
        return rng.normal(size=factors.shape)
    two = factors[:, 0] * SIZES[3] + factors[:, 3]
    return np.stack([two, factors[:, 1], factors[:, 2], rng.normal(size=len(factors))], 1)


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
    """MIG, DCI and SAP of each kind of code, on 1000 training and 500 test points."""
    train, test = draw(1000, 0), draw(500, 1)
    out = {}
    for kind in ("factors", "rotated", "noise", "entangled"):
        codes, test_codes = as_codes(kind, train), as_codes(kind, test)
        dcis = dci(codes, train, test_codes, test, trees=10)
        nmi = normalised_mutual_information(codes, train)
        out[kind] = {
            "mig": mig(codes, train),
            "gap_of_first": float(np.sort(nmi[:, 0])[-1] - np.sort(nmi[:, 0])[-2]),
            "d": dcis.disentanglement,
            "c": dcis.completeness,
            "i": dcis.informativeness,
            "sap": sap(sap_matrix(codes, train, test_codes, test)),
        }
    return out


def test_the_factors_themselves_are_disentangled(scores):
    own = scores["factors"]
    assert own["mig"] > 0.95 and own["d"] > 0.95 and own["c"] > 0.95 and own["i"] > 0.95
    assert own["sap"] > 0.2  # a linear SVM on one dimension separates few of 16 classes


def test_a_rotation_of_the_factors_scores_lower(scores):
    own, rotated = scores["factors"], scores["rotated"]
    assert rotated["mig"] < 0.5 and rotated["d"] < 0.6 and rotated["c"] < 0.6
    for metric in ("mig", "d", "c", "sap"):
        assert rotated[metric] < own[metric] - 0.2, metric


def test_noise_scores_near_zero(scores):
    noise = scores["noise"]
    assert noise["mig"] < 0.05 and noise["d"] < 0.1 and noise["c"] < 0.1 and noise["sap"] < 0.05
    assert noise["i"] < 0.3  # about chance: the mean of 1/3, 1/6, 1/10 and 1/16


def test_one_dimension_with_two_factors_keeps_mig_for_one_and_loses_dci_disentanglement(scores):
    entangled, own = scores["entangled"], scores["factors"]
    assert entangled["gap_of_first"] > 0.85  # the dimension still determines the first factor
    assert entangled["mig"] > 0.8
    assert entangled["d"] < own["d"] - 0.15
    assert entangled["c"] > 0.9  # each factor still lives in one dimension


def test_normalised_mutual_information_by_hand():
    """y = (0, 0, 0, 1), H(y) = ln 4 - 3/4 ln 3. Two bins cut the first dimension into
    (0, 0 | 1, 1): H(y | bin) = 1/2 ln 2. The second into (1 | 0, 0, 0): H(y | bin) =
    3/4 H(0, 0, 1) = 3/4 ln 3 - 1/2 ln 2."""
    codes = np.array([[0.0, 1.0], [0.1, 0.0], [0.9, 0.0], [1.0, 0.0]])
    factor = np.array([[0], [0], [0], [1]])
    entropy = math.log(4) - 0.75 * math.log(3)
    first = 1 - 0.5 * math.log(2) / entropy
    second = 1 - (0.75 * math.log(3) - 0.5 * math.log(2)) / entropy
    nmi = normalised_mutual_information(codes, factor, bins=2)
    assert nmi[:, 0] == pytest.approx([first, second])
    assert mutual_information_gap(nmi) == pytest.approx(first - second)
    assert first - second == pytest.approx(0.2327, abs=1e-4)


def test_mig_refuses_a_constant_factor_and_a_single_dimension():
    with pytest.raises(ValueError, match="factor 1 takes one value"):
        normalised_mutual_information(np.ones((4, 2)), np.array([[0, 1], [1, 1], [0, 1], [1, 1]]))
    with pytest.raises(ValueError, match="at least 2 code dimensions"):
        mutual_information_gap(np.ones((1, 3)))


def test_dci_of_importance_matrices_by_hand():
    """Two dimensions that both serve factor 0 only: each is specific (disentanglement 1), but
    factor 0 is split evenly between them (completeness 0; factor 1 has no weight)."""
    assert dci_from_importance(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(
        (1, 0), abs=1e-6
    )
    assert dci_from_importance(np.eye(3)) == pytest.approx((1, 1), abs=1e-6)
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0, 0), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 code dimensions and 2 factors"):
        dci_from_importance(np.ones((1, 3)))


def test_continuous_sap_is_the_squared_correlation():
    factors = draw(500, 3)
    codes = np.concatenate([factors * 2.0 + 1, np.zeros((500, 1))], axis=1)
    scores = sap_matrix(codes, factors, codes, factors, continuous=True)
    assert np.diag(scores) == pytest.approx(1.0)
    assert (scores[4] == 0).all() and sap(scores) == pytest.approx(1.0, abs=0.02)


def factor_set(sizes: tuple[int, ...] = (3, 4, 5)) -> FactorImages:
    """Every combination once, each image a row of its factor values as pixels: an encoder
    that reads the pixels gives the factors themselves."""
    factors = np.indices(sizes).reshape(len(sizes), -1).T
    images = factors.astype(np.uint8).reshape(-1, 1, 1, len(sizes))
    return FactorImages(images, factors, ("a", "b", "c")[: len(sizes)], sizes, "test set")


def pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64)


def test_factor_vae_score_is_one_for_the_factors_and_prunes_a_collapsed_dimension():
    data = factor_set()
    with_collapsed = codes_lookup(
        lambda images: np.concatenate([pixels(images), np.full((len(images), 1), 3.0)], 1),
        data,
        needed=10**6,
    )
    score = factor_vae_score(with_collapsed, data, np.random.default_rng(0), 16, 200, 100, 500)
    assert (score.train_accuracy, score.eval_accuracy, score.active_dims) == (1.0, 1.0, 3)


def test_factor_vae_score_of_noise_is_near_chance_and_of_a_rotation_below_one():
    data = factor_set()
    rng = np.random.default_rng(1)
    noise = factor_vae_score(lambda f: rng.normal(size=f.shape), data, rng, 16, 300, 300, 500)
    assert noise.eval_accuracy < 0.6  # chance: 1/3, the majority vote overfits a little
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotated = factor_vae_score(lambda f: f / 4 @ rotation, data, rng, 16, 300, 300, 500)
    assert rotated.eval_accuracy < 0.9
    assert factor_vae_score(lambda f: np.zeros(f.shape), data, rng).active_dims == 0


def test_codes_lookup_encodes_the_whole_set_once_or_only_what_it_draws():
    data = factor_set()
    seen: list[int] = []

    def encode(images: np.ndarray) -> np.ndarray:
        seen.append(len(images))
        return pixels(images)

    wanted = data.factors[[5, 7, 5]]
    whole = codes_lookup(encode, data, needed=60, batch_size=25)
    assert seen == [25, 25, 10] and np.array_equal(whole(wanted), wanted)
    assert seen == [25, 25, 10]  # looked up, not encoded again
    seen.clear()
    drawn = codes_lookup(encode, data, needed=59, batch_size=2)
    assert np.array_equal(drawn(wanted), wanted) and seen == [2, 1]


def test_disentanglement_metrics_of_the_factors_themselves():
    data = factor_set((4, 5, 6))
    budget = MetricBudget(2000, 20, 600, 300, 5, 600, 300, 16, 100, 100, 500)
    report = disentanglement_metrics(pixels, data, budget, seed=3)
    assert set(report.scores) == {
        "mig",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
        "sap",
        "factor_vae_score",
    }
    assert all(isinstance(v, float) for v in report.scores.values())
    for metric in ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert report.scores[metric] > 0.95, metric
    assert report.scores["factor_vae_score"] == 1.0 and report.scores["sap"] > 0.2
    assert report.mutual_information.shape == (3, 3) and report.factor_names == ("a", "b", "c")
    assert np.argmax(report.mutual_information, axis=1).tolist() == [0, 1, 2]
    assert disentanglement_metrics(pixels, data, budget, seed=3).scores == report.scores


def test_the_paper_budget_is_disentanglement_libs():
    assert (PAPER_BUDGET.mig_points, PAPER_BUDGET.bins, PAPER_BUDGET.dci_trees) == (10000, 20, 100)
    assert (PAPER_BUDGET.dci_train, PAPER_BUDGET.dci_test) == (10000, 5000)
    assert (PAPER_BUDGET.sap_train, PAPER_BUDGET.sap_test) == (10000, 5000)
    assert PAPER_BUDGET.factor_vae_batch == 64
    assert PAPER_BUDGET.images() == 10000 + 15000 + 15000 + 15000 * 64 + 10000


def test_twenty_bins_cap_what_a_factor_of_more_values_can_score():
    """dSprites' 32 positions and 40 orientations, as codes of themselves, keep about 0.85 and
    0.81 of their entropy through 20 bins."""
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(32, size=10000), rng.integers(40, size=10000)], axis=1)
    nmi = normalised_mutual_information(factors.astype(np.float64), factors)
    assert np.diag(nmi) == pytest.approx([0.85, 0.81], abs=0.01)
