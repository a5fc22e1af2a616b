"""The Python API as the README shows it: its code blocks run as written, in a folder whose
`data/` holds synthetic MNIST; the run they train is exported (`python -m aelab.export`) and
the encoder and decoder, in onnxruntime and as torch.export programs, give PyTorch's outputs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_dataset

from aelab.errors import ConfigError


def readme_api_code() -> str:
    """The Python code blocks of the README's "Python API" section, joined."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "the README's Python API section has no python code block"
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def readme(tmp_path_factory) -> dict:
    """The names the README's API code defines, run in a fresh folder with synthetic data/."""
    folder = tmp_path_factory.mktemp("readme")
    # mnist's val_size holds out 5000 training images: a few batches more than that
    write_dataset(folder / "data" / "MNIST" / "raw", n_train=5256, n_test=256)
    namespace: dict = {"__name__": "readme"}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        exec(compile(readme_api_code(), "README.md", "exec"), namespace)
    namespace["folder"] = folder
    return namespace


@pytest.mark.slow
def test_readme_api_examples_run(readme):
    import torch

    namespace, tmp_path = readme, readme["folder"]
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


TOLERANCE = 1e-5


def inputs(run) -> tuple:
    """Five test images and five codes: another batch size than the exporter's example."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return run.test_images(5), torch.randn(5, run.config.model.latent_dim, generator=generator)


def exported(run, fmt: str, out: Path) -> list[str]:
    """What `python -m aelab.export ckpt_path=<run's checkpoint> format=FMT` writes into `out`
    (the entry point's function, in this process: torch's exporters take seconds to import)."""
    import aelab
    from aelab.export import export

    cfg = aelab.compose([f"ckpt_path={run.checkpoint}", f"format={fmt}"], config_name="export")
    cfg.paths.output_dir = str(out)
    return [path.name for path in export(cfg)]


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(readme, tmp_path, capsys):
    import onnxruntime
    import torch

    run = readme["run"]
    assert exported(run, "onnx", tmp_path) == ["encoder.onnx", "decoder.onnx"]
    said = capsys.readouterr()
    assert "[torch.onnx]" not in said.out + said.err  # the exporter's ~30 progress lines
    images, codes = inputs(run)
    cpu = ["CPUExecutionProvider"]
    encoder = onnxruntime.InferenceSession(tmp_path / "encoder.onnx", providers=cpu)
    decoder = onnxruntime.InferenceSession(tmp_path / "decoder.onnx", providers=cpu)
    (onnx_codes,) = encoder.run(["codes"], {"images": images.numpy()})
    (onnx_images,) = decoder.run(["images"], {"codes": codes.numpy()})
    torch.testing.assert_close(
        torch.from_numpy(onnx_codes), run.encode(images), atol=TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        torch.from_numpy(onnx_images), run.decode(codes), atol=TOLERANCE, rtol=0
    )
    assert (tmp_path / "export.yaml").read_text().count("'N'") == 4


@pytest.mark.slow
def test_torch_export_programs_match_pytorch(readme, tmp_path):
    import torch

    run = readme["run"]
    assert exported(run, "exported", tmp_path) == ["encoder.pt2", "decoder.pt2"]
    images, codes = inputs(run)
    encoder = torch.export.load(tmp_path / "encoder.pt2").module()
    decoder = torch.export.load(tmp_path / "decoder.pt2").module()
    torch.testing.assert_close(encoder(images), run.encode(images), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(decoder(codes), run.decode(codes), atol=TOLERANCE, rtol=0)


def test_an_unknown_export_format_is_one_line(tmp_path):
    import aelab
    from aelab.export import export

    cfg = aelab.compose(["ckpt_path=x.ckpt", "format=torchscript"], config_name="export")
    with pytest.raises(
        ConfigError, match="format='torchscript' is not allowed; it must be onnx or exported"
    ):
        export(cfg)


def test_the_api_compares_runs_by_the_names_the_command_line_gives(tmp_path):
    """HParams shows `vae`, `mlp` for a run started from the API as for one from train.py (it
    showed the class names, VAE and MLP), and the composed config holds no `hydra` node."""
    import aelab
    from aelab.loggers.hparams import compared_hparams

    cfg = aelab.compose(["model=vae", "scheduler=cosine", f"paths.log_dir={tmp_path}"])
    assert "hydra" not in cfg
    values = compared_hparams(cfg, seed=1)
    assert (values["model"], values["net"], values["scheduler"]) == ("vae", "mlp", "cosine")
