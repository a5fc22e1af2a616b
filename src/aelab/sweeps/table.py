"""Tables, written one way: a pandas DataFrame as `<name>.csv`, `<name>.md` (Markdown through
pandas' `to_markdown`) and a Rich table on screen, every number in one format (`number`,
`mean_std`). They serve the results table of a multirun (here), its summary over seeds
(`aelab.sweeps.summary`), aelab.eval's tables and the results command (`aelab.results`).

One results table per multirun, gathered from the jobs' records: `results.csv` and
`results.md` in the sweep folder, and printed. Failed and pruned jobs are rows too."""

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from aelab.config import short_value
from aelab.sweeps.jobs import RESULT_FILE, read_record

log = logging.getLogger(__name__)
COLUMNS = ["best_epoch", "val/loss", "test/loss", "val/recon", "val/kl", "test/recon", "test/kl"]
STYLES = {"failed": "red", "pruned": "yellow"}


def number(value: float) -> str:
    """Four decimals from 1 up (105.5612 nats), four significant digits below (0.002534 MSE),
    so that losses of 0.0025 and 0.0026 stay apart; whole numbers (epochs) as they are."""
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4f}" if abs(value) >= 1 else f"{value:#.4g}"


def mean_std(mean: float | None, std: float | None) -> str:
    """mean ± std; the mean alone with one job (no std); empty with none."""
    if mean is None or pd.isna(mean):
        return ""
    return number(mean) if std is None or pd.isna(std) else f"{number(mean)} ± {number(std)}"


def difference(diff: float, low: float, high: float) -> str:
    """A difference of means and its confidence interval, `*` when the interval excludes 0;
    "-" where there is none (the baseline itself, a row of fewer than 2 values)."""
    if pd.isna(diff):
        return "-"
    mark = "" if low <= 0 <= high else " *"
    return f"{number(diff)} [{number(low)}, {number(high)}]{mark}"


def p_value(p: float) -> str:
    """Two significant digits (0.0031, 0.43, 1.2e-05); "-" where there is none."""
    return "-" if pd.isna(p) else f"{p:.2g}"


def markdown(shown: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """`shown` (cells already text) as a Markdown table, the columns `right` aligned right."""
    cells = shown.map(lambda cell: str(cell).replace("|", "\\|"))
    align = ["right" if column in right else "left" for column in shown.columns]
    return cells.to_markdown(index=False, tablefmt="pipe", disable_numparse=True, colalign=align)


def write_tables(
    folder: Path,
    name: str,
    shown: pd.DataFrame,
    right: Sequence[str] = (),
    data: pd.DataFrame | None = None,
    foot: str = "",
) -> None:
    """`<name>.csv` (of `data`, full precision, else of `shown`) and `<name>.md` (of `shown`,
    the columns `right` aligned right, then `foot`) in `folder`."""
    (shown if data is None else data).to_csv(folder / f"{name}.csv", index=False)
    text = markdown(shown, right) + "\n" + (f"\n{foot}\n" if foot else "")
    (folder / f"{name}.md").write_text(text)


def show(
    shown: pd.DataFrame,
    title: str,
    styles: Sequence[str | None] | None = None,
    right: Sequence[str] = (),
) -> None:
    """Print `shown` as a Rich table, each row in its style (`STYLES`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in shown.columns:
        table.add_column(column, overflow="fold", justify="right" if column in right else "left")
    rows = shown.astype(str).itertuples(index=False)
    for row, style in zip(rows, styles or [None] * len(shown), strict=True):
        table.add_row(*row, style=style)
    Console(width=160).print(table)


def short_override(override: str) -> str:
    """`key=value` with a float value to four significant digits."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{short_value(value)}" if sep else override


def collect(sweep_dir: Path) -> list[dict]:
    """Every job's record under `sweep_dir`, in job order."""
    found = [read_record(p.parent) for p in sweep_dir.glob(f"*/{RESULT_FILE}")]
    records = [record for record in found if record is not None]
    return sorted(records, key=lambda r: r["job"])


def results_frame(records: list[dict], columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    """One row of text per job; the overrides column keeps only what differs between jobs."""
    shared = set.intersection(*(set(r["overrides"].split()) for r in records))
    present = [c for c in columns if any(c in r["metrics"] for r in records)]
    rows = [
        {
            "job": str(r["job"]),
            "overrides": " ".join(o for o in r["overrides"].split() if o not in shared),
            "status": r["status"],
            **{c: number(r["metrics"][c]) if c in r["metrics"] else "" for c in present},
            "seconds": f"{r['seconds']:.1f}",
            "error": r["error"],
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=["job", "overrides", "status", *present, "seconds", "error"])


def write_table(
    sweep_dir: Path,
    records: list[dict] | None = None,
    name: str = "results",
    columns: Sequence[str] = COLUMNS,
    foot: str = "",
) -> None:
    """Write `<name>.csv` and `<name>.md` and print the table of every job recorded under
    `sweep_dir`, or of `records` (none: nothing)."""
    records = collect(sweep_dir) if records is None else records
    if not records:
        return
    frame = results_frame(records, columns)
    right = [c for c in frame.columns if c not in ("overrides", "status", "error")]
    write_tables(sweep_dir, name, frame, right, foot=foot)
    counts = Counter(r["status"] for r in records)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    # a searched float to four digits on screen (lr=0.007350, not 19 digits over 7 lines); the
    # files keep it whole
    shown = frame.assign(
        overrides=[" ".join(map(short_override, o.split())) for o in frame.overrides]
    )
    styles = [STYLES.get(status) for status in frame["status"]]
    show(shown, f"{len(records)} jobs in {sweep_dir} ({summary})", styles, right)
    for r in records:
        if r["status"] == "failed":
            log.warning(f"job {r['job']} failed ({r['overrides']}): {r['error']}")
