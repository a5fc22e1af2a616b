"""Is a row of a table better than its baseline, or is the difference within the seeds' noise?

Welch's t over seeds: the difference of two means, its confidence interval and the two-sided
p-value, without assuming that both rows spread alike (a VAE's seeds and an IWAE's need not).
From each row's mean, sample standard deviation (ddof=1) and count, which is what a summary
over seeds keeps. The standard error is sqrt(s_a^2/n_a + s_b^2/n_b); the degrees of freedom
are Welch-Satterthwaite's, (v_a + v_b)^2 / (v_a^2/(n_a-1) + v_b^2/(n_b-1)) with v = s^2/n.
"""

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Difference:
    """mean_a - mean_b, its confidence interval [low, high], the p-value and the degrees of
    freedom of Welch's t."""

    diff: float
    low: float
    high: float
    p: float
    df: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero (at 95%: p < 0.05, the same t and df)."""
        return not self.low <= 0 <= self.high


def welch(
    mean_a: float,
    std_a: float,
    n_a: int,
    mean_b: float,
    std_b: float,
    n_b: int,
    level: float = 0.95,
) -> Difference | None:
    """Row a against row b. None where there is nothing to test: fewer than 2 values in either
    row (no spread to judge by), a missing mean or spread, or no spread in either (every seed
    gave the same number, so the interval would be a point)."""
    if n_a < 2 or n_b < 2 or any(math.isnan(v) for v in (mean_a, std_a, mean_b, std_b)):
        return None
    var_a, var_b = std_a**2 / n_a, std_b**2 / n_b
    if var_a + var_b == 0:
        return None
    test = stats.ttest_ind_from_stats(mean_a, std_a, n_a, mean_b, std_b, n_b, equal_var=False)
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    diff = mean_a - mean_b
    half = float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(var_a + var_b)
    return Difference(diff, diff - half, diff + half, float(test.pvalue), df)
