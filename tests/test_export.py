"""`python -m aelab.export`: the encoder and decoder of a checkpoint, in onnxruntime and as
torch.export programs, give PyTorch's outputs."""

import pytest
import torch

import aelab
from tests.conftest import small_run_overrides

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A VAE trained for one batch, without loggers or pictures."""
    overrides = [
        *small_run_overrides(data_dir),
        f"paths.log_dir={tmp_path_factory.mktemp('logs')}",
        "debug=fast",
        "logger=none",
        "~callbacks.image_grids",
        "~callbacks.latent_pictures",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
    ]
    return aelab.fit(aelab.compose(overrides))


def inputs(run) -> tuple[torch.Tensor, torch.Tensor]:
    """Five test images and five codes: another batch size than the exporter's example."""
    return run.test_images(5), torch.randn(
        5, run.config.model.latent_dim, generator=torch.Generator().manual_seed(0)
    )


def exported(run, fmt: str, out) -> list[str]:
    """What `python -m aelab.export ckpt_path=<run's checkpoint> format=FMT` writes into `out`
    (the entry point's function, in this process: torch's exporters take seconds to import)."""
    from aelab.export import export

    cfg = aelab.compose([f"ckpt_path={run.checkpoint}", f"format={fmt}"], config_name="export")
    cfg.paths.output_dir = str(out)
    return [path.name for path in export(cfg)]


def test_onnx_export_matches_pytorch_in_onnxruntime(trained, tmp_path):
    import onnxruntime

    out = tmp_path
    assert exported(trained, "onnx", out) == ["encoder.onnx", "decoder.onnx"]
    images, codes = inputs(trained)
    encoder = onnxruntime.InferenceSession(out / "encoder.onnx", providers=["CPUExecutionProvider"])
    decoder = onnxruntime.InferenceSession(out / "decoder.onnx", providers=["CPUExecutionProvider"])
    (onnx_codes,) = encoder.run(["codes"], {"images": images.numpy()})
    (onnx_images,) = decoder.run(["images"], {"codes": codes.numpy()})
    torch.testing.assert_close(
        torch.from_numpy(onnx_codes), trained.encode(images), atol=TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        torch.from_numpy(onnx_images), trained.decode(codes), atol=TOLERANCE, rtol=0
    )
    assert (out / "export.yaml").read_text().count("'N'") == 4


def test_torch_export_programs_match_pytorch(trained, tmp_path):
    from aelab.export import export

    cfg = aelab.compose(
        [f"ckpt_path={trained.checkpoint}", "format=exported"], config_name="export"
    )
    cfg.paths.output_dir = str(tmp_path)
    assert [p.name for p in export(cfg)] == ["encoder.pt2", "decoder.pt2"]
    images, codes = inputs(trained)
    encoder = torch.export.load(tmp_path / "encoder.pt2").module()
    decoder = torch.export.load(tmp_path / "decoder.pt2").module()
    torch.testing.assert_close(encoder(images), trained.encode(images), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(decoder(codes), trained.decode(codes), atol=TOLERANCE, rtol=0)


def test_an_unknown_format_is_one_line(trained):
    from aelab.errors import ConfigError
    from aelab.export import export

    cfg = aelab.compose(
        [f"ckpt_path={trained.checkpoint}", "format=torchscript"], config_name="export"
    )
    with pytest.raises(
        ConfigError, match="format='torchscript' is not allowed; it must be onnx or exported"
    ):
        export(cfg)
