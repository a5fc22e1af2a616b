"""The package as a user gets it from an index: a wheel, installed without `-e`, run from a
folder that has nothing to do with this repository."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from conftest import REPO, small_run_overrides


def test_an_editable_install_reads_the_configs_at_the_clones_root():
    """configs/ is mapped into the package as aelab.configs; nothing else holds them."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    from aelab.cli import register_plugins
    from aelab.config import CONFIG_DIR

    assert CONFIG_DIR == REPO / "configs" and (CONFIG_DIR / "train.yaml").is_file()
    assert not (REPO / "src" / "aelab" / "configs").exists()
    # Hydra's own scan cannot list plugins served by the editable install's import hook
    register_plugins()
    names = {plugin.__name__ for plugin in Plugins.instance().discover(Sweeper)}
    assert "OptunaSweeper" in names


@pytest.mark.slow
def test_a_wheel_installed_without_e_trains_from_an_unrelated_folder(data_dir, tmp_path):
    # built from a copy, so that setuptools' build folder does not land in the clone
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    shutil.copytree(REPO / "configs", source / "configs")  # shipped as aelab.configs
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    # setuptools said nothing: its scan of package data warned once per config folder (20 times)
    assert "Warning" not in build.stdout + build.stderr, build.stderr[-3000:]
    (wheel,) = wheels.glob("aelab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = REPO / "configs"
    shipped = {f"aelab/configs/{path.relative_to(configs)}" for path in configs.rglob("*.yaml")}
    assert shipped <= names
    # Hydra finds the Optuna sweeper and the launcher only in its own namespace
    assert {
        "hydra_plugins/aelab_plugins/sweeper.py",
        "hydra_plugins/aelab_plugins/launcher.py",
    } <= names
    assert "aelab/configs/hydra/sweeper/pruner/median.yaml" in names

    # a fresh environment that sees this one's packages through a .pth file (torch is not
    # installed again; whether this one is a venv or the system's Python) but holds its own,
    # non-editable aelab, which comes first on its path: a .pth line only appends a folder, so
    # this environment's editable aelab (a finder registered by its own .pth) stays out
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    (inner,) = (venv / "lib").glob("python3*/site-packages")
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (inner / "outer-environment.pth").write_text("".join(f"{path}\n" for path in sorted(outer)))
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import aelab; print(aelab.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    result = subprocess.run(
        [
            venv / "bin" / "aelab-train",
            "model=ae",
            "data=mnist",
            "trainer.max_epochs=1",
            *small_run_overrides(data_dir),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (elsewhere / "logs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert not (elsewhere / "data").exists()  # paths.data_dir was given


def test_the_declared_lightning_floor_is_the_one_measured():
    """Lightning gained `weights_only` in Trainer.fit/test and load_from_checkpoint in 2.6.0
    (train.py passes it; with 2.5.6 fit raises TypeError); the tests passed on lightning 2.6.0
    (docs/benchmarks.md says how that was checked)."""
    import inspect

    import lightning as L

    pyproject = (REPO / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    assert '"lightning>=2.6,<3"' in pyproject
    assert "weights_only" in inspect.signature(L.Trainer.fit).parameters
    assert "weights_only" in inspect.signature(L.LightningModule.load_from_checkpoint).parameters
