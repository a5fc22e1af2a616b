"""One results table per multirun, gathered from the jobs' records: `results.csv` and
`results.md` in the sweep folder, and printed. Failed and pruned jobs are rows too. Beside it,
the summary over seeds (`aelab.sweeps.summary`): `summary.csv`, `summary.md`."""

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

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


def short_override(override: str) -> str:
    """`key=value` with a float value to four significant digits."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{short_value(value)}" if sep else override


def collect(sweep_dir: Path) -> list[dict]:
    """Every job's record under `sweep_dir`, in job order."""
    found = [read_record(p.parent) for p in sweep_dir.glob(f"*/{RESULT_FILE}")]
    records = [record for record in found if record is not None]
    return sorted(records, key=lambda r: r["job"])


def table_rows(
    records: list[dict], columns: Sequence[str] = COLUMNS
) -> tuple[list[str], list[list[str]]]:
    """Header and rows; the overrides column keeps only what differs between jobs."""
    shared = set.intersection(*(set(r["overrides"].split()) for r in records))
    present = [c for c in columns if any(c in r["metrics"] for r in records)]
    header = ["job", "overrides", "status", *present, "seconds", "error"]
    rows = [
        [
            str(r["job"]),
            " ".join(o for o in r["overrides"].split() if o not in shared),
            r["status"],
            *[number(r["metrics"][c]) if c in r["metrics"] else "" for c in present],
            f"{r['seconds']:.1f}",
            r["error"],
        ]
        for r in records
    ]
    return header, rows


def write_table(
    sweep_dir: Path,
    records: list[dict] | None = None,
    name: str = "results",
    columns: Sequence[str] = COLUMNS,
) -> None:
    """Write `<name>.csv` and `<name>.md` and print the table of every job recorded under
    `sweep_dir`, or of `records` (none: nothing)."""
    records = collect(sweep_dir) if records is None else records
    if not records:
        return
    header, rows = table_rows(records, columns)
    with open(sweep_dir / f"{name}.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    (sweep_dir / f"{name}.md").write_text("\n".join(lines) + "\n")

    from rich.console import Console
    from rich.table import Table

    counts = Counter(r["status"] for r in records)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    table = Table(title=f"{len(records)} jobs in {sweep_dir} ({summary})")
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows:
        # a searched float to four digits on screen (lr=0.007350, not 19 digits over 7 lines);
        # the files keep it whole
        shown = [row[0], " ".join(map(short_override, row[1].split())), *row[2:]]
        table.add_row(*shown, style=STYLES.get(row[2]))
    Console(width=160).print(table)
    for r in records:
        if r["status"] == "failed":
            log.warning(f"job {r['job']} failed ({r['overrides']}): {r['error']}")
