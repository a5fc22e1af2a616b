"""Many seeds, error bars: the jobs of a sweep grouped by every override except `seed`.

One row per group: `n`, the jobs that finished (`ok`), and the `failed` and `pruned` ones, which
are counted but never averaged in; for each metric the mean, the sample standard deviation
over the group's finished jobs (ddof=1, the estimate of the spread between seeds; with n=1 it
is empty, not 0) and how many of them recorded it. Written as `<name>.csv` (mean, std and count
in columns of their own, full precision) and `<name>.md` (mean ± std), and printed.

With a baseline group, each group's metrics are compared with the baseline's (`compare`): the
difference of means, its 95% interval and p-value by Welch's t over seeds (`aelab.stats`).
"""

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from aelab.errors import ConfigError
from aelab.stats import welch
from aelab.sweeps.table import COLUMNS, STYLES, difference, mean_std, p_value, show, write_tables

SEED = re.compile(r"^\+{0,2}seed=")  # seed=1, +seed=1, ++seed=1
STATUSES = ("failed", "pruned")


def metric_columns(records: list[dict]) -> list[str]:
    """Every metric some job recorded: the results table's columns first, then the rest."""
    present = {name for r in records for name in r["metrics"]}
    return [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))


def group_of(overrides: str, shared: set[str]) -> str:
    """A job's group: its overrides without `seed` and without those every job shares."""
    return " ".join(o for o in overrides.split() if o not in shared and not SEED.match(o))


def summarize(records: list[dict]) -> pd.DataFrame:
    """One row per group, in the order of each group's first job: `overrides`, `n`, `failed`,
    `pruned`, then `<metric>_mean`, `<metric>_std` and `<metric>_n` (the finished jobs that
    recorded it) for every metric."""
    shared = set.intersection(*(set(r["overrides"].split()) for r in records))
    metrics = metric_columns(records)
    jobs = pd.DataFrame(
        [
            {"overrides": group_of(r["overrides"], shared), "status": r["status"]} | r["metrics"]
            for r in records
        ],
        columns=["overrides", "status", *metrics],
    )
    groups = jobs["overrides"].unique()
    counts = pd.crosstab(jobs["overrides"], jobs["status"])
    counts = counts.reindex(index=groups, columns=["ok", *STATUSES], fill_value=0)
    summary = counts.rename(columns={"ok": "n"})
    if metrics:  # none when every job failed
        finished = jobs[jobs["status"] == "ok"]
        stats = finished.groupby("overrides")[metrics].agg(["mean", "std", "count"])
        stats = stats.reindex(groups)
        stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
        stats = stats.rename(columns={f"{m}_count": f"{m}_n" for m in metrics})
        counted = [f"{m}_n" for m in metrics]
        stats[counted] = stats[counted].fillna(0).astype(int)
        summary = summary.join(stats)
    return summary.rename_axis("overrides").reset_index()


def spread(row: pd.Series, metric: str) -> tuple[float, float, int]:
    """A summary row's mean, std and count of `metric` (NaN, NaN, 0 where it has none); the
    row's `n` stands in for the count in a summary written before counts were kept."""
    count = row.get(f"{metric}_n", row.get("n"))
    mean, std = (row.get(f"{metric}_{stat}", math.nan) for stat in ("mean", "std"))
    return float(mean), float(std), 0 if count is None or pd.isna(count) else int(count)


# a compared metric's columns: the difference, its interval's ends, the p-value
FIELDS = ("diff", "low", "high", "p")


def compare(
    summary: pd.DataFrame, label: str, baseline: str, metrics: Sequence[str], key: str
) -> pd.DataFrame:
    """`summary` with each row's `metrics` compared with those of the row whose `label` column
    is `baseline`: `<metric>_diff` (row minus baseline) and its 95% interval `<metric>_low`,
    `<metric>_high`, and `<metric>_p`, by Welch's t; NaN on the baseline row and where either
    row has fewer than 2 values. A baseline that names no row is an error naming `key`."""
    labels = [str(name) for name in summary[label]]
    if baseline not in labels:
        raise ConfigError(f"{key}={baseline!r} names no row; the rows: {', '.join(labels)}")
    base = summary.iloc[labels.index(baseline)]
    columns = {}
    for metric in metrics:
        found = [
            None if name == baseline else welch(*spread(row, metric), *spread(base, metric))
            for name, (_, row) in zip(labels, summary.iterrows(), strict=True)
        ]
        for field in FIELDS:
            columns[f"{metric}_{field}"] = [
                math.nan if d is None else getattr(d, field) for d in found
            ]
    return summary.assign(**columns)


def comparison_cells(
    data: pd.DataFrame, metric: str, heading: str, baseline: str
) -> dict[str, list[str]]:
    """The two Markdown columns of `metric` compared with `baseline` (from `compare`): the
    difference with its interval (`*`: it excludes 0), and the p-value."""
    diffs = zip(data[f"{metric}_diff"], data[f"{metric}_low"], data[f"{metric}_high"], strict=True)
    return {
        f"Δ {heading} vs {baseline} [95% CI]": [difference(*d) for d in diffs],
        f"p: {heading}": [p_value(p) for p in data[f"{metric}_p"]],
    }


COMPARED = (
    "Δ: the group's mean minus the baseline's, with the 95% confidence interval of Welch's t "
    "over seeds (* where it excludes 0); p: Welch's two-sided p-value; - on the baseline and "
    "where either group has fewer than 2 finished jobs with the metric."
)


def write_summary(
    folder: Path,
    records: list[dict],
    name: str = "summary",
    foot: str = "",
    baseline: str | None = None,
    compared: Sequence[str] = (),
) -> pd.DataFrame:
    """Write `<name>.csv` and `<name>.md` (then `foot`) into `folder` and print the summary (no
    records: nothing). With a `baseline` group (its overrides but seed and those every job
    shares, as the summary's `overrides` column shows them), each group's `compared` metrics
    that some job recorded are compared with the baseline's."""
    if not records:
        return pd.DataFrame()
    summary = summarize(records)
    shown = summary[["overrides", "n", *STATUSES]].astype(str)
    metrics = metric_columns(records)
    for metric in metrics:
        shown[metric] = [
            mean_std(m, s)
            for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"], strict=True)
        ]
    if baseline is not None:
        compared = [m for m in compared if m in metrics]
        summary = compare(summary, "overrides", baseline, compared, "baseline")
        for metric in compared:
            shown = shown.assign(**comparison_cells(summary, metric, metric, baseline))
        foot = "\n\n".join(filter(None, [COMPARED, foot]))
    right = list(shown.columns[1:])
    write_tables(folder, name, shown, right, data=summary, foot=foot)
    # a group none of whose jobs finished, in the colour of why
    failed = [next((s for s in STATUSES if row[s]), None) for _, row in summary.iterrows()]
    styles = [
        STYLES.get(f) if n == 0 and f else None for f, n in zip(failed, summary["n"], strict=True)
    ]
    title = (
        f"{len(records)} jobs in {folder} grouped by their overrides but seed: "
        "mean ± sample std (ddof=1) over the finished jobs"
    )
    show(shown, title, styles, right)
    return summary
