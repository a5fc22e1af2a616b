"""Every module that src/ imports comes from a package pyproject.toml declares: deptry, which
.ci/run runs on src/, must fail on an import that arrives only as another package's dependency
(or by hand), as it did for scikit-learn through mlflow."""

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def deptry(folder):
    return subprocess.run(
        [sys.executable, "-m", "deptry", "src"], cwd=folder, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("planted", "rule"),
    [
        ("import requests", "DEP003"),  # installed (through mlflow), declared nowhere
        ("import yaml", "DEP004"),  # declared, but only in the dev extra
        ("import not_a_package_anywhere", "DEP001"),
    ],
)
def test_deptry_fails_on_an_undeclared_import_planted_in_a_copy(tmp_path, planted, rule):
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", copy)
    clean = deptry(copy)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (copy / "src" / "aelab" / "planted.py").write_text(f"{planted}\n")
    found = deptry(copy)
    assert found.returncode != 0
    assert rule in found.stdout + found.stderr and "planted.py" in found.stdout + found.stderr
