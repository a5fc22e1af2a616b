"""Results entry point: `python -m aelab.results paths.data_dir=DIR table=models epochs=10`.

The one command behind `docs/results.md`. A table (`table=models`, `table=families`) names its
rows, each a set of train.py overrides; for each dataset and row, one multirun of `train.py` over
the seeds (resumable: a rerun reads finished jobs back and resumes interrupted ones from their
last checkpoint), then `aelab.eval` on that multirun's folder (each job's evaluation is kept
beside its checkpoint and reused while the checkpoint and the settings stay the same), then the
table of mean ± std over the seeds, written into its own section of `output` (the other
sections are left as they are). Interrupt it at any point and run the same command again to go
on, so a full table can be completed over several sittings; the table's CSV records each row's
settings, so a row evaluated in an earlier sitting, even in another work folder or on another
machine, stays in the table while the command's settings are the same.
"""

import datetime
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig

from aelab.cli import command
from aelab.errors import AelabError, ConfigError, Interrupted

if TYPE_CHECKING:
    import pandas as pd

# (metric, heading) in the tables' order; a column only when some job has the metric
COLUMNS = [
    ("test/loss", "test loss"),
    ("test/recon_mse", "recon MSE"),
    ("test/neg_elbo", "-ELBO (nats)"),
    ("test/nll_iw", "nll_iw (nats)"),
    ("test/fd_classifier", "FD (classifier)"),
    ("test/precision", "precision"),
    ("test/recall", "recall"),
    ("test/fid", "FID (Inception)"),
    ("test/knn_acc", "k-NN acc"),
    ("test/linear_acc", "linear acc"),
    # on data with ground-truth factors (aelab.evaluation.disentanglement)
    ("test/mig", "MIG"),
    ("test/dci_disentanglement", "DCI disent."),
    ("test/dci_completeness", "DCI compl."),
    ("test/dci_informativeness", "DCI inform."),
    ("test/sap", "SAP"),
    ("test/factor_vae_score", "FactorVAE score"),
]
HEADINGS = dict(COLUMNS)


def quoted(value: object) -> str:
    """`value` as one quoted string of Hydra's override grammar, whatever characters (`=`, `,`,
    spaces) a path holds."""
    escaped = str(value).replace("'", "\\'")
    return f"'{escaped}'"


def train_command(cfg: DictConfig, dataset: str, row: str) -> list[str]:
    """The multirun of one row over the seeds on `dataset`, into `<work_dir>/<dataset>/<row>`."""
    return [
        sys.executable,
        "-m",
        "aelab.train",
        "-m",
        *cfg.table.rows[row],
        f"data={dataset}",
        f"seed={','.join(str(s) for s in row_seeds(cfg, row))}",
        f"trainer.max_epochs={cfg.epochs}",
        f"paths.data_dir={quoted(cfg.paths.data_dir)}",
        f"paths.cache_dir={quoted(cfg.paths.cache_dir)}",
        f"hydra.sweep.dir={quoted(Path(cfg.work_dir) / dataset / row)}",
        *cfg.table.common,
        *cfg.train_overrides,
    ]


def own_seeds(cfg: DictConfig) -> dict[str, list[int]]:
    """The rows with their own seeds, the table's `row_seeds` (a comparison that needs more seeds
    than the rest of the table; null: none)."""
    return dict(cfg.table.get("row_seeds") or {})


def row_seeds(cfg: DictConfig, row: str) -> list[int]:
    """The row's seeds: its own (`own_seeds`), else the command's `seeds`."""
    return list(own_seeds(cfg).get(row, cfg.seeds))


def eval_command(cfg: DictConfig, dataset: str, row: str) -> list[str]:
    """`aelab.eval` on the row's multirun folder (its tables go into that folder)."""
    sweep = Path(cfg.work_dir) / dataset / row
    return [
        sys.executable,
        "-m",
        "aelab.eval",
        f"ckpt_path={quoted(sweep)}",
        f"protocol={cfg.protocol.name}",
        f"iw_samples={cfg.iw_samples}",
        f"sample_metrics.count={cfg.sample_count}",
        f"sample_metrics.inception={str(cfg.inception).lower()}",
        f"paths.cache_dir={quoted(cfg.paths.cache_dir)}",
        f"hydra.run.dir={quoted(sweep / 'eval')}",
        *cfg.eval_overrides,
    ]


def table_data(cfg: DictConfig, dataset: str) -> "pd.DataFrame":
    """One line per row of the table: `row`, then the columns of the row's `eval_summary.csv`
    with the row's `settings` and the day it was evaluated (`made`); a row this work folder has
    not evaluated keeps its line of the CSV already beside `output` when that line was made with
    the same settings (`earlier_rows`), so a table fills up over several sittings and machines.
    With a `table.baseline`, each row's `table.compare` metrics against the baseline row's
    (`aelab.sweeps.summary.compare`)."""
    import pandas as pd

    from aelab.sweeps.summary import compare

    paths = {row: Path(cfg.work_dir) / dataset / row / "eval_summary.csv" for row in cfg.table.rows}
    found = earlier_rows(cfg, dataset, [row for row, path in paths.items() if not path.is_file()])
    for row, path in paths.items():
        if path.is_file():
            made = datetime.date.fromtimestamp(path.stat().st_mtime)
            found[row] = read_csv(path).iloc[0].to_dict() | {"made": f"{made:%Y-%m-%d}"}
            found[row]["settings"] = row_settings(cfg, row)
    lines = [{"row": row} | found.get(row, {}) for row in cfg.table.rows]
    data = pd.DataFrame(lines).drop(columns="overrides", errors="ignore")
    counts = [c for c in data.columns if c in ("n", "failed", "pruned") or c.endswith("_n")]
    data[counts] = data[counts].astype("Int64")  # whole numbers, also beside a row not run yet
    if cfg.table.get("baseline") is None:
        return data
    return compare(data, "row", cfg.table.baseline, cfg.table.compare, "table.baseline")


def read_csv(path: Path) -> "pd.DataFrame":
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def row_settings(cfg: DictConfig, row: str) -> str:
    """Everything that makes a row's numbers what they are, as one line of overrides: the row's
    and the table's train.py overrides, the budget, the evaluation's settings."""
    return " ".join(
        [
            *cfg.table.rows[row],
            *cfg.table.common,
            f"epochs={cfg.epochs}",
            f"seeds=[{','.join(str(s) for s in row_seeds(cfg, row))}]",
            f"protocol={cfg.protocol.name}",
            f"iw_samples={cfg.iw_samples}",
            f"sample_count={cfg.sample_count}",
            f"inception={str(cfg.inception).lower()}",
            *(f"train:{o}" for o in cfg.train_overrides),
            *(f"eval:{o}" for o in cfg.eval_overrides),
        ]
    )


def earlier_rows(cfg: DictConfig, dataset: str, missing: list[str]) -> dict[str, dict]:
    """The lines of the table's CSV (`csv_path`) for the `missing` rows that an earlier sitting
    evaluated with the settings this command has, without their comparison columns (computed
    anew); a line made with other settings is left out, with one line saying so."""
    from aelab.sweeps.summary import FIELDS

    path = csv_path(cfg, dataset)
    if not path.is_file():
        return {}
    compared = {f"{m}_{f}" for m in cfg.table.get("compare") or [] for f in FIELDS}
    kept = {}
    for line in read_csv(path).to_dict("records"):
        row, settings = line.get("row"), line.get("settings")
        if row not in missing or not isinstance(settings, str):
            continue
        if settings != row_settings(cfg, row):
            print(f"{path.name}: row {row} was made with other settings ({settings}); not kept")
            continue
        kept[row] = {k: v for k, v in line.items() if k != "row" and k not in compared}
    return kept


def table(cfg: DictConfig, data: "pd.DataFrame") -> str:
    """The dataset's Markdown table from its `table_data`: n, failed and mean ± std of every
    column some row has ("not run yet" in a row without an evaluation), then the comparisons
    with the baseline row."""
    import pandas as pd

    from aelab.sweeps.summary import comparison_cells
    from aelab.sweeps.table import markdown

    columns = [(m, h) for m, h in COLUMNS if data.get(f"{m}_mean", pd.Series()).notna().any()]
    headings = ["row", "n", "failed", *(h for _, h in columns)]
    rows = [[f"`{line['row']}`", *cells(line, columns)] for _, line in data.iterrows()]
    shown = pd.DataFrame(rows, columns=headings)
    baseline = cfg.table.get("baseline")
    for metric in cfg.table.compare if baseline is not None else ():
        shown = shown.assign(**comparison_cells(data, metric, HEADINGS[metric], f"`{baseline}`"))
    return markdown(shown, right=list(shown.columns[1:])) + classifier_note(data)


def classifier_note(data: "pd.DataFrame") -> str:
    """The feature classifier's test accuracy under the table; where rows were measured with
    different classifiers (trained in different sittings), each one's rows, since Fréchet
    distances and precision/recall compare only within one classifier's rows."""
    import pandas as pd

    rows: dict[str, list[str]] = {}
    for row, accuracy in zip(data["row"], data.get("test/classifier_acc_mean", []), strict=False):
        if pd.notna(accuracy):
            rows.setdefault(f"{accuracy:.2%}", []).append(f"`{row}`")
    if len(rows) < 2:
        return "".join(f"\n\nThe feature classifier's own test accuracy: {a}." for a in rows)
    listed = "; ".join(f"{accuracy} ({', '.join(names)})" for accuracy, names in rows.items())
    return (
        f"\n\nThe feature classifiers' own test accuracies: {listed}. The rows were measured "
        "with different classifiers (trained in different sittings): compare their sample "
        "metrics only within one classifier's rows."
    )


def cells(summary: "pd.Series", columns: list[tuple[str, str]]) -> list[str]:
    """A row's `n`, `failed` and mean ± std of each column; "not run yet" without a summary."""
    import pandas as pd

    from aelab.sweeps.table import mean_std

    if pd.isna(summary.get("n")):
        return ["0", "-", *("not run yet" for _ in columns)]
    means = [mean_std(summary.get(f"{m}_mean"), summary.get(f"{m}_std")) or "-" for m, _ in columns]
    return [str(int(summary["n"])), str(int(summary["failed"])), *means]


def csv_path(cfg: DictConfig, dataset: str) -> Path:
    """The table's CSV, full precision, beside `output`: `<output's name>_<table>_<dataset>.csv`."""
    output = Path(cfg.output)
    return output.with_name(f"{output.stem}_{cfg.table.name}_{dataset}.csv")


def machine() -> str:
    import torch

    from aelab.machine import cpu_name

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    return f"{cpu_name()}, {os.cpu_count()} cores{gpu}; {versions}"


def comparison_text(cfg: DictConfig) -> str:
    """How to read the comparison columns, and where the CSV is."""
    files = ", ".join(
        f"[{csv_path(cfg, d).name}]({csv_path(cfg, d).name})" for d in cfg.table.datasets
    )
    baseline = cfg.table.get("baseline")
    if baseline is None:
        return f"Every column at full precision: {files}."
    return (
        f"Δ ... vs `{baseline}`: the row's mean minus the `{baseline}` row's, with the 95% "
        "confidence interval of Welch's t over the seeds (unequal spreads, Welch-Satterthwaite "
        "degrees of freedom), marked * where the interval excludes 0; p: the two-sided p-value "
        f"of the same test; - on the `{baseline}` row itself and where either row has fewer "
        f"than 2 seeds with the metric. Every column at full precision, with the interval's "
        f"ends: {files}."
    )


def likelihood_and_samples_text(cfg: DictConfig) -> str:
    """What `nll_iw` and the sample metrics measured, or that they were switched off (0)."""
    likelihood = (
        f"`nll_iw`: -log p(x) with K={cfg.iw_samples} importance samples."
        if cfg.iw_samples > 0
        else "No `nll_iw` (iw_samples=0)."
    )
    if cfg.sample_count <= 0:
        return f"{likelihood} No sample metrics (sample_count=0)."
    return (
        f"{likelihood} Sample metrics on {cfg.sample_count} generated and as many test images "
        "(VAEs from their prior, autoencoders from a 10-component Gaussian mixture of their "
        "training codes): Fréchet distance and precision/recall (k=3) in the features of a "
        "classifier trained once per dataset."
    )


def sittings_text(data: "dict[str, pd.DataFrame]") -> str:
    """The days the rows were evaluated on, when more than one (the table filled up over several
    sittings of the command, each with `only=` some rows), else nothing."""
    days: dict[str, set[str]] = {}
    for frame in data.values():
        for row, made in zip(frame["row"], frame.get("made", [None] * len(frame)), strict=True):
            if isinstance(made, str):
                days.setdefault(made, set()).add(row)
    if len(days) < 2:
        return ""
    listed = "; ".join(
        f"{day}: {', '.join(f'`{r}`' for r in sorted(rows))}" for day, rows in sorted(days.items())
    )
    return (
        "The rows were evaluated over several sittings of this command with the same settings "
        f"(`only=` some rows each time; the CSV's `made` and `settings` columns): {listed}. "
    )


def seeds_text(cfg: DictConfig) -> str:
    """The command's seeds, and each row's own (`table.row_seeds`) after them."""
    own = own_seeds(cfg).items()
    rows = "; ".join(f"`{row}`: {', '.join(map(str, seeds))}" for row, seeds in own)
    return ", ".join(map(str, cfg.seeds)) + (f" ({rows})" if rows else "")


def section(cfg: DictConfig, command: str, data: "dict[str, pd.DataFrame]") -> str:
    """The table's section: its title, the command, the budget, the machine, the rows' overrides
    and one table per dataset (`data`: each dataset's `table_data`)."""
    rows = "; ".join(f"`{row}`: `{' '.join(o)}`" for row, o in cfg.table.rows.items())
    common = " ".join(cfg.table.common)
    parts = [
        f"## {cfg.table.title}",
        "",
        f"Generated by `{command}` on {datetime.date.today():%Y-%m-%d} ({machine()}); do not edit "
        "by hand, rerun the command. Every row is trained for "
        f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} with seeds "
        f"{seeds_text(cfg)} and tested at its best "
        "epoch by `val/loss`; each cell is the mean ± sample standard deviation over the seeds "
        "(`n` finished; `failed` are counted, never averaged in). Test loss: MSE per pixel for "
        "autoencoders, nats per image (-ELBO, or the bound a family trains on) for the others "
        "(`beta_vae`: recon + beta KL). `recon MSE`: squared error per pixel of the "
        "reconstruction (the decoded posterior mean or code) against the test image. "
        f"Evaluated with protocol={cfg.protocol.name}. "
        f"{likelihood_and_samples_text(cfg)} "
        "k-NN (k=10) and linear-probe accuracy of the latent codes. -ELBO: recon + KL "
        "whatever the weights a row trained with. On data with ground-truth factors: MIG, DCI "
        "(gradient-boosted trees), SAP and the FactorVAE score after disentanglement_lib, with "
        f"the {cfg.protocol.name} budget of points.",
        "",
        f"Rows (train.py overrides): {rows}" + (f"; every row: `{common}`." if common else "."),
        "",
        sittings_text(data) + comparison_text(cfg),
    ]
    for dataset in cfg.table.datasets:
        parts += ["", f"### {dataset}", "", table(cfg, data[dataset])]
    return "\n".join(parts)


def write_results(cfg: DictConfig, command: str) -> Path:
    """Rewrite the table's section of `output` (between its two marker comments), keeping the
    rest of the file; a new file gets a title, a missing section goes at the end. Under a lock,
    so that the commands of two tables can run at once. Each dataset's table also goes, at full
    precision, into its CSV beside `output` (`csv_path`)."""
    import fcntl

    from aelab.checkpoints import write_atomically

    data = {dataset: table_data(cfg, dataset) for dataset in cfg.table.datasets}
    begin, end = f"<!-- aelab.results table={cfg.table.name} -->", "<!-- end of table -->"
    block = f"{begin}\n{section(cfg, command, data)}\n{end}"
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.with_name(f".{output.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = output.read_text() if output.is_file() else "# Results\n"
        if begin in text:
            head, rest = text.split(begin, 1)
            if end not in rest:
                raise ConfigError(f"{output}: {begin} has no {end} after it; restore or delete it")
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        write_atomically(output, text.encode())
        for dataset, frame in data.items():
            write_atomically(csv_path(cfg, dataset), frame.to_csv(index=False).encode())
    return output


def chosen_rows(cfg: DictConfig) -> list[str]:
    """The rows to run: `only`, each checked against the table's rows, or all of them."""
    rows = list(cfg.table.rows)
    if not rows or not cfg.table.datasets or not cfg.seeds:
        raise ConfigError("table.rows, table.datasets and seeds must each name at least one")
    for row, seeds in own_seeds(cfg).items():
        if row not in rows or not isinstance(seeds, ListConfig) or not seeds:
            raise ConfigError(
                f"table.row_seeds.{row}={seeds}: each key must be a row of "
                f"table={cfg.table.name} ({', '.join(rows)}) with a list of at least one seed"
            )
    if cfg.only is None:
        return rows
    unknown = [row for row in cfg.only if row not in rows]
    if unknown or not cfg.only:
        raise ConfigError(
            f"only={list(cfg.only)}: {', '.join(unknown) or 'no row'} is not a row of "
            f"table={cfg.table.name}; its rows: {', '.join(rows)}"
        )
    return [row for row in rows if row in cfg.only]


def check_comparison(cfg: DictConfig) -> None:
    """`table.baseline` (null, or a row of the table) and `table.compare` (the metrics it is
    compared on: columns of the tables), checked before anything runs."""
    baseline, compared = cfg.table.get("baseline"), list(cfg.table.get("compare") or [])
    if baseline is None:
        return
    if baseline not in cfg.table.rows:
        raise ConfigError(
            f"table.baseline={baseline} is not a row of table={cfg.table.name}; its rows: "
            f"{', '.join(cfg.table.rows)} (or null: no comparison)"
        )
    unknown = [metric for metric in compared if metric not in HEADINGS]
    if unknown or not compared:
        raise ConfigError(
            f"table.compare={compared}: {', '.join(unknown) or 'no metric'} is not a column of "
            f"the tables; the columns: {', '.join(HEADINGS)}"
        )


def shown_command(args: list[str]) -> str:
    """The command line as the docs show it, the one that makes the whole table: this machine's
    folders left out (`paths.*`, an absolute `output=`; a relative one such as docs/results.md
    stays), the data folder as a placeholder, and `only=` left out (the table holds every row
    evaluated so far with these settings)."""

    def machine_specific(arg: str) -> bool:
        if arg.startswith("output="):
            return Path(arg.removeprefix("output=").strip("'\"")).is_absolute()
        return arg.startswith(("paths.", "work_dir=", "tables_only=", "only="))

    shown = [shell_word(a) for a in args if not machine_specific(a)]
    return " ".join(["python -m aelab.results", *shown, "paths.data_dir=/path/to/data"])


def shell_word(arg: str) -> str:
    """`arg` as a shell reads it back: as it is when plain (`only=[vae,iwae_k5]`), in double
    quotes when it holds Hydra's single quotes (`"train_overrides=['trainer=gpu']"`), else
    quoted by shlex."""
    if re.fullmatch(r"[\w@%+=:,./\-\[\]]+", arg):
        return arg
    if "'" in arg and not re.search(r'["$`\\!]', arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def run_step(command: list[str]) -> int:
    """Run a training or evaluation step and return its exit code. Stopped by SIGTERM (or
    Ctrl-C), this process stops its step first, which saves a checkpoint that the rerun
    resumes from: the step is never left running on its own."""

    def stop(signum: int, frame: object) -> None:
        raise Interrupted("stopped by SIGTERM; rerun the same command to go on where it stopped")

    previous = signal.signal(signal.SIGTERM, stop)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
        signal.signal(signal.SIGTERM, previous)


def results(cfg: DictConfig) -> Path:
    """Train what is missing, evaluate what is not yet, write the table's section."""
    rows = chosen_rows(cfg)
    check_comparison(cfg)
    failed = []
    command_line = shown_command(sys.argv[1:])
    if cfg.tables_only:
        output = write_results(cfg, command_line)
        print(f"Wrote {output}")
        return output
    for dataset in cfg.table.datasets:  # one failure does not stop the others
        for row in rows:
            for step, make_command in (("training", train_command), ("evaluation", eval_command)):
                if run_step(make_command(cfg, dataset, row)) != 0:
                    failed.append(f"the {step} of {row} on {dataset}")
                    break
            output = write_results(cfg, command_line)  # after each row: a stop keeps the rest
        print(f"Wrote {output}")
    if failed:
        raise AelabError(
            f"{', '.join(failed)} stopped with an error (above); {output} has the rest"
        )
    return output


main = command("results", results)  # `aelab-results`, `python -m aelab.results`


if __name__ == "__main__":
    main()
