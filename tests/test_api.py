"""The Python API as the README shows it: its code blocks run as written, in a folder whose
`data/` holds synthetic MNIST."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aelab.errors import ConfigError
from tests.conftest import REPO, write_dataset


def readme_api_code() -> str:
    """The Python code blocks of the README's "Python API" section, joined."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "the README's Python API section has no python code block"
    return "\n".join(blocks)


@pytest.mark.slow
def test_readme_api_examples_run(tmp_path, monkeypatch):
    import torch

    # mnist's val_size holds out 5000 training images: a few batches more than that
    write_dataset(tmp_path / "data" / "MNIST" / "raw", n_train=5256, n_test=256)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_api_code(), "README.md", "exec"), namespace)
    run, x, z, x_hat = (namespace[name] for name in ("run", "x", "z", "x_hat"))
    assert run.folder.parent == tmp_path / "logs" / "train" / "runs"
    assert run.checkpoint.parent == run.folder / "checkpoints"
    assert {"val/loss", "test/loss", "best_epoch"} <= set(run.metrics)
    assert x.shape == x_hat.shape == (8, 1, 28, 28)
    assert z.shape == (8, run.config.model.latent_dim)
    assert torch.equal(z, run.model.encode(x))
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    assert run.datamodule.test_set.images.shape[0] == 256
    assert namespace["aelab"].load_run(run.checkpoint).metrics == run.metrics


def test_import_aelab_loads_no_framework():
    code = "import sys, aelab; print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_run_of_a_folder_that_is_no_run(tmp_path):
    import aelab

    with pytest.raises(ConfigError, match=r"not a run folder \(no config.yaml\)"):
        aelab.load_run(tmp_path)
    with pytest.raises(ConfigError, match="no such run folder or checkpoint"):
        aelab.load_run(Path(tmp_path, "missing"))
