"""Sweeps that survive a failing job, and one results table per sweep.

In a multirun every job records `result.json` in its folder: status, final metrics, wall time,
overrides and, for a failed job, the error in one line. A job that diverges or raises is
recorded as failed and returns +inf, the worst value for the minimised metric (what Optuna
gets), instead of aborting the sweep. At the end `ResultsTable` gathers the records into
`results.csv` and `results.md` in the sweep folder and prints them. The `val/...` columns are
those of each job's best checkpoint (the one it tested and returned to the sweeper), from the
epoch in `best_epoch`.
"""

import csv
import gc
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aelab.errors import AelabError, root_cause

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"
COLUMNS = ["best_epoch", "val/loss", "test/loss", "val/recon", "val/kl", "test/recon", "test/kl"]


def _one_line(err: BaseException) -> str:
    """The root cause in one line (Hydra's instantiate wraps the real error)."""
    err = root_cause(err)
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, AelabError) else f"{type(err).__name__}: {text}"


def number(value: float) -> str:
    """Four decimals from 1 up (105.5612 nats), four significant digits below (0.002534 MSE),
    so that losses of 0.0025 and 0.0026 stay apart; whole numbers (epochs) as they are."""
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4f}" if abs(value) >= 1 else f"{value:#.4g}"


def run_sweep_job(
    cfg: DictConfig,
    fit_and_test: Callable[[DictConfig], dict[str, float]],
    optimized: Callable[[DictConfig, dict[str, float]], float | None],
) -> float | None:
    """Run one job of a sweep; never let its failure abort the others."""
    hydra_cfg = HydraConfig.get()
    record = {"job": hydra_cfg.job.num, "overrides": " ".join(hydra_cfg.overrides.task)}
    start = time.perf_counter()
    try:
        metrics = fit_and_test(cfg)
        value = optimized(cfg, metrics)
        record |= {"status": "ok", "metrics": metrics, "error": ""}
        if value is not None and not math.isfinite(value):
            record |= {"status": "failed", "error": f"{cfg.optimized_metric} is {value}"}
            value = math.inf
    except Exception as err:
        record |= {"status": "failed", "metrics": {}, "error": _one_line(err)}
        log.error(f"job {record['job']} ({record['overrides']}) failed: {record['error']}")
        value = math.inf
    # The job's Trainer, model and dataset (on the GPU too) sit in reference cycles that
    # Python's cyclic collector may leave for several jobs; jobs share one process.
    gc.collect()
    record["seconds"] = round(time.perf_counter() - start, 1)
    Path(hydra_cfg.runtime.output_dir, RESULT_FILE).write_text(json.dumps(record, indent=2))
    return value


def collect(sweep_dir: Path) -> list[dict]:
    """Every job's record under `sweep_dir`, in job order."""
    records = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{RESULT_FILE}")]
    return sorted(records, key=lambda r: r["job"])


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows; the overrides column keeps only what differs between jobs."""
    shared = set.intersection(*(set(r["overrides"].split()) for r in records))
    present = [c for c in COLUMNS if any(c in r["metrics"] for r in records)]
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


class ResultsTable(Callback):
    """Hydra callback: after any multirun, one table of every job (CSV, Markdown, console)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = collect(sweep_dir)
        if not records:
            return
        header, rows = table_rows(records)
        with open(sweep_dir / "results.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
        ]
        (sweep_dir / "results.md").write_text("\n".join(lines) + "\n")

        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(records)} jobs in {sweep_dir}")
        for column in header:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row, style="red" if row[2] == "failed" else None)
        Console(width=160).print(table)
        failed = [r for r in records if r["status"] == "failed"]
        for r in failed:
            log.warning(f"job {r['job']} failed ({r['overrides']}): {r['error']}")
