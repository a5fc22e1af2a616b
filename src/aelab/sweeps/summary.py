"""Many seeds, error bars: the jobs of a sweep grouped by every override except `seed`.

One row per group: `n`, the jobs that finished (`ok`), and the `failed` and `pruned` ones, which
are counted but never averaged in; for each metric the mean and the sample standard deviation
over the group's finished jobs (ddof=1, the estimate of the spread between seeds; with n=1 it
is empty, not 0). Written as `<name>.csv` (mean and std in columns of their own, full
precision) and `<name>.md` (mean ± std), and printed.
"""

import re
from pathlib import Path

import pandas as pd

from aelab.sweeps.table import COLUMNS, STYLES, mean_std, show, write_tables

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
    `pruned`, then `<metric>_mean` and `<metric>_std` for every metric."""
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
        stats = finished.groupby("overrides")[metrics].agg(["mean", "std"]).reindex(groups)
        stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
        summary = summary.join(stats)
    return summary.rename_axis("overrides").reset_index()


def write_summary(
    folder: Path, records: list[dict], name: str = "summary", foot: str = ""
) -> pd.DataFrame:
    """Write `<name>.csv` and `<name>.md` (then `foot`) into `folder` and print the summary (no
    records: nothing)."""
    if not records:
        return pd.DataFrame()
    summary = summarize(records)
    shown = summary[["overrides", "n", *STATUSES]].astype(str)
    for metric in metric_columns(records):
        shown[metric] = [
            mean_std(m, s)
            for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"], strict=True)
        ]
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
