"""Each row of a table against a baseline row: the difference of means, its 95% interval and
p-value by Welch's t over seeds, checked against scipy and against the formula by hand, and
carried into the sweep summary's and the results command's Markdown and CSV."""

import csv
import math
import os
import statistics

import pytest
from omegaconf import OmegaConf
from scipy import stats

from aelab.errors import ConfigError
from aelab.stats import welch


def welch_of(a: list[float], b: list[float]):
    return welch(
        statistics.mean(a),
        statistics.stdev(a),
        len(a),
        statistics.mean(b),
        statistics.stdev(b),
        len(b),
    )


def test_welch_matches_scipy_on_raw_values():
    a, b = [94.1, 94.9, 95.3, 94.6], [92.0, 93.5, 92.8]
    found = welch_of(a, b)
    scipy_s = stats.ttest_ind(a, b, equal_var=False)
    interval = scipy_s.confidence_interval(0.95)
    assert found.diff == pytest.approx(statistics.mean(a) - statistics.mean(b))
    assert (found.low, found.high) == pytest.approx((interval.low, interval.high))
    assert found.p == pytest.approx(scipy_s.pvalue) and found.df == pytest.approx(scipy_s.df)
    assert found.significant and found.p < 0.05


def test_welch_by_hand_on_tiny_numbers():
    # a = 1, 2, 3: mean 2, s^2 = 1, s^2/n = 1/3; b = 3, 5, 7: mean 5, s^2 = 4, s^2/n = 4/3
    found = welch_of([1, 2, 3], [3, 5, 7])
    se = math.sqrt(1 / 3 + 4 / 3)
    df = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)  # = 50/17
    assert found.diff == -3 and found.df == pytest.approx(50 / 17)
    assert df == pytest.approx(50 / 17)
    half = stats.t.ppf(0.975, 50 / 17) * se
    assert (found.low, found.high) == pytest.approx((-3 - half, -3 + half))
    t = -3 / se
    assert found.p == pytest.approx(2 * stats.t.sf(abs(t), 50 / 17))
    assert found.low < 0 < found.high and not found.significant  # 3 seeds: too few to tell


def test_welch_needs_two_values_and_some_spread():
    assert welch(1.0, math.nan, 1, 2.0, 1.0, 3) is None  # one seed: no spread
    assert welch(1.0, 1.0, 3, 2.0, 1.0, 1) is None
    assert welch(1.0, 0.0, 3, 2.0, 0.0, 3) is None  # every seed alike: no interval
    assert welch(math.nan, math.nan, 0, 2.0, 1.0, 3) is None  # the metric is missing


def records_of(groups: dict[str, list[float | None]]) -> list[dict]:
    """Jobs of a sweep over seeds: a value per seed, None for a failed seed."""
    return [
        {
            "job": i,
            "overrides": f"{group} seed={seed}",
            "status": "ok" if value is not None else "failed",
            "metrics": {} if value is None else {"val/loss": value, "test/loss": value + 1},
            "seconds": 1.0,
            "error": "",
        }
        for i, (group, seed, value) in enumerate(
            (g, s, v) for g, values in groups.items() for s, v in enumerate(values)
        )
    ]


GROUPS = {
    "model=vae": [100.0, 100.5, 99.5],
    "model=iwae": [95.0, 95.2, 94.9],  # clearly below
    "model=wae": [100.2, 99.6, 101.0],  # within the noise
    "model=vq": [90.0, None, None],  # one finished seed
}


def test_a_sweep_summary_compares_each_group_with_its_baseline(tmp_path):
    from aelab.sweeps.summary import write_summary

    write_summary(tmp_path, records_of(GROUPS), baseline="model=vae", compared=["val/loss"])
    with open(tmp_path / "summary.csv") as f:
        rows = {row["overrides"]: row for row in csv.DictReader(f)}
    iwae = welch_of(GROUPS["model=iwae"], GROUPS["model=vae"])
    assert float(rows["model=iwae"]["val/loss_diff"]) == pytest.approx(iwae.diff)
    assert float(rows["model=iwae"]["val/loss_low"]) == pytest.approx(iwae.low)
    assert float(rows["model=iwae"]["val/loss_high"]) == pytest.approx(iwae.high)
    assert float(rows["model=iwae"]["val/loss_p"]) == pytest.approx(iwae.p)
    assert rows["model=vq"]["val/loss_n"] == "1" and rows["model=vq"]["val/loss_diff"] == ""
    assert rows["model=vae"]["val/loss_p"] == ""
    assert "test/loss_diff" not in rows["model=vae"]  # only the metrics compared

    lines = (tmp_path / "summary.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    cells = {
        row[0]: dict(zip(header, row, strict=True))
        for row in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:6])
    }
    delta, p = "Δ val/loss vs model=vae [95% CI]", "p: val/loss"
    assert header[-2:] == [delta, p]
    assert cells["model=iwae"][delta] == f"{iwae.diff:.4f} [{iwae.low:.4f}, {iwae.high:.4f}] *"
    assert cells["model=wae"][delta].endswith("]")  # the interval holds 0: no mark
    assert cells["model=iwae"][p] == f"{iwae.p:.2g}"
    for group in ("model=vae", "model=vq"):  # the baseline itself, and a single seed
        assert (cells[group][delta], cells[group][p]) == ("-", "-")
    assert any(line.startswith("Δ: the group's mean minus the baseline's") for line in lines)


def test_a_sweep_summary_without_a_baseline_has_no_comparison(tmp_path):
    from aelab.sweeps.summary import write_summary

    write_summary(tmp_path, records_of(GROUPS))
    assert "Δ" not in (tmp_path / "summary.md").read_text()
    assert "val/loss_diff" not in (tmp_path / "summary.csv").read_text()


def test_a_baseline_must_name_a_group(tmp_path):
    from aelab.sweeps.summary import write_summary

    with pytest.raises(ConfigError) as err:
        write_summary(tmp_path, records_of(GROUPS), baseline="model=vea", compared=["val/loss"])
    assert str(err.value) == (
        "baseline='model=vea' names no row; the rows: model=vae, model=iwae, model=wae, model=vq"
    )


def results_cfg(tmp_path, baseline="vae", compare=("test/nll_iw",)):
    from aelab.sweeps.summary import summarize

    nll = {"vae": [95.0, 94.6, 94.8], "iwae": [93.9, 94.1, 93.8], "wae": [99.0]}
    for row, values in nll.items():
        records = records_of({"": values})
        for r in records:
            r["metrics"] = {"test/nll_iw": r["metrics"]["val/loss"], "test/loss": 0.5}
        folder = tmp_path / "work" / "mnist" / row
        folder.mkdir(parents=True)
        summarize(records).to_csv(folder / "eval_summary.csv", index=False)
    table = {"name": "families", "title": "Families", "datasets": ["mnist"], "common": []}
    table |= {"rows": {row: [f"model={row}"] for row in [*nll, "vqvae"]}}
    table |= {"baseline": baseline, "compare": list(compare)}
    cfg = {"table": table, "work_dir": str(tmp_path / "work"), "output": str(tmp_path / "r.md")}
    cfg |= {"epochs": 1, "seeds": [1, 2, 3], "iw_samples": 5, "sample_count": 8}
    cfg |= {"protocol": {"name": "cpu"}, "only": None, "inception": False}
    cfg |= {"train_overrides": ["hydra/launcher=processes"], "eval_overrides": []}
    return OmegaConf.create(cfg), nll


def test_the_results_table_compares_each_row_with_the_baseline_row(tmp_path):
    from aelab.results import write_results

    cfg, nll = results_cfg(tmp_path)
    output = write_results(cfg, "python -m aelab.results table=families")
    text = output.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    delta, p = "Δ nll_iw (nats) vs `vae` [95% CI]", "p: nll_iw (nats)"
    assert header[-2:] == [delta, p]
    cells = {
        row[0]: dict(zip(header, row, strict=True))
        for row in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[1:])
    }
    iwae = welch_of(nll["iwae"], nll["vae"])
    shown = f"[{iwae.low:.4f}, {iwae.high:.4f}] *"
    assert cells["`iwae`"][delta].endswith(shown) and cells["`iwae`"][p] == f"{iwae.p:.2g}"
    for row in ("`vae`", "`wae`", "`vqvae`"):  # the baseline, one seed, not run yet
        assert (cells[row][delta], cells[row][p]) == ("-", "-"), row
    assert cells["`vqvae`"]["nll_iw (nats)"] == "not run yet"
    assert (
        "Welch's t over the seeds" in text
        and "[r_families_mnist.csv](r_families_mnist.csv)" in text
    )

    with open(tmp_path / "r_families_mnist.csv") as f:
        rows = {row["row"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["vae", "iwae", "wae", "vqvae"]
    assert float(rows["iwae"]["test/nll_iw_low"]) == pytest.approx(iwae.low)
    assert float(rows["iwae"]["test/nll_iw_p"]) == pytest.approx(iwae.p)
    assert rows["wae"]["test/nll_iw_diff"] == rows["vqvae"]["test/nll_iw_mean"] == ""


def test_a_row_evaluated_in_an_earlier_sitting_stays_in_the_table_while_its_settings_do(
    tmp_path, capsys
):
    """The CSV beside `output` carries each row's settings and day: a later sitting that runs
    other rows (a new work folder) keeps them, compared anew; other settings drop them, saying so."""
    import shutil

    from aelab.results import write_results

    cfg, nll = results_cfg(tmp_path)
    first = write_results(cfg, "python -m aelab.results table=families").read_text()
    with open(tmp_path / "r_families_mnist.csv") as f:
        made = {row["row"]: row for row in csv.DictReader(f)}
    assert made["iwae"]["settings"] == (
        "model=iwae epochs=1 seeds=[1,2,3] protocol=cpu iw_samples=5 sample_count=8 "
        "inception=false train:hydra/launcher=processes"
    )
    assert made["vqvae"]["settings"] == made["vqvae"]["made"] == ""  # not run yet

    shutil.rmtree(tmp_path / "work" / "mnist" / "vae")  # the next sitting: vae from the CSV
    for row in ("iwae", "wae"):  # these two evaluated on another day
        os.utime(tmp_path / "work" / "mnist" / row / "eval_summary.csv", (0, 86400 * 20000))
    again = write_results(cfg, "python -m aelab.results table=families").read_text()
    assert (
        again.replace(
            "The rows were evaluated over several sittings of this command with the same settings "
            "(`only=` some rows each time; the CSV's `made` and `settings` columns): "
            f"2024-10-04: `iwae`, `wae`; {made['vae']['made']}: `vae`. ",
            "",
        )
        == first
    )
    assert capsys.readouterr().out == ""

    other = cfg.copy()
    other.epochs = 2
    shutil.rmtree(tmp_path / "work" / "mnist" / "iwae")
    text = write_results(other, "python -m aelab.results table=families epochs=2").read_text()
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if "| `" in line}
    assert "not run yet" in lines["`iwae`"] and "not run yet" not in lines["`wae`"]
    assert capsys.readouterr().out.splitlines() == [
        f"r_families_mnist.csv: row {row} was made with other settings ({made[row]['settings']}); "
        "not kept"
        for row in ("vae", "iwae")
    ]
    assert "not run yet" in lines["`vae`"]
    assert nll  # the seeds' values made the first table


def test_the_results_table_without_a_baseline_has_no_comparison(tmp_path):
    from aelab.results import write_results

    cfg, _ = results_cfg(tmp_path, baseline=None, compare=())
    text = write_results(cfg, "python -m aelab.results").read_text()
    assert "Δ" not in text and "Every column at full precision: [r_families_mnist.csv]" in text
    assert "test/nll_iw_mean" in (tmp_path / "r_families_mnist.csv").read_text()


@pytest.mark.parametrize(
    ("baseline", "compare", "message"),
    [
        (
            "vea",
            ["test/nll_iw"],
            "table.baseline=vea is not a row of table=families; its rows: vae, iwae, wae, vqvae "
            "(or null: no comparison)",
        ),
        (
            "vae",
            ["test/nll"],
            "table.compare=['test/nll']: test/nll is not a column of the tables; the columns: "
            "test/loss, test/recon_mse, test/neg_elbo, test/nll_iw,",
        ),
        ("vae", [], "table.compare=[]: no metric is not a column of the tables;"),
    ],
)
def test_the_results_command_checks_its_baseline_before_it_runs(
    tmp_path, baseline, compare, message
):
    from aelab.results import results

    cfg, _ = results_cfg(tmp_path, baseline, compare)
    with pytest.raises(ConfigError) as err:
        results(cfg)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "r.md").exists()


def test_the_families_table_compares_with_its_vae():
    from hydra import compose, initialize_config_module

    from aelab.results import check_comparison

    for name in ("families", "models"):
        with initialize_config_module("aelab.configs", version_base="1.3"):
            cfg = compose("results", overrides=[f"table={name}"])
        check_comparison(cfg)
        if name == "families":
            assert cfg.table.baseline == "vae" and "test/nll_iw" in cfg.table.compare


@pytest.mark.parametrize("baseline", ["model=vae", "model=vea"])
def test_a_multirun_compares_with_the_baseline_its_callback_names(tmp_path, caplog, baseline):
    from hydra import compose, initialize_config_module

    from aelab.sweeps.callbacks import ResultsTable
    from aelab.sweeps.jobs import write_record

    for record in records_of(GROUPS):
        (tmp_path / str(record["job"])).mkdir()
        write_record(tmp_path / str(record["job"]), record)
    with initialize_config_module("aelab.configs", version_base="1.3"):
        shipped = compose("train", return_hydra_config=True).hydra.callbacks.results_table
    assert shipped.baseline is None and list(shipped.compared) == ["val/loss", "test/loss"]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {}}})
    ResultsTable(baseline, shipped.compared).on_multirun_end(config)
    summary = (tmp_path / "summary.md").read_text()
    assert "model=iwae" in summary and ("Δ test/loss vs model=vae" in summary) == (
        baseline == "model=vae"
    )
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == (
        []
        if baseline == "model=vae"
        else [
            "hydra.callbacks.results_table.baseline='model=vea' names no row; the rows: "
            "model=vae, model=iwae, model=wae, model=vq; the summary has no comparison"
        ]
    )
