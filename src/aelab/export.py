"""Export entry point: `python -m aelab.export ckpt_path=PATH format=onnx|exported` (or
`aelab-export ...`).

Writes a checkpoint's encoder (images -> codes) and decoder (codes -> images) as two files
another program runs without aelab, into its run folder (`hydra.run.dir=...` moves it):

- `format=onnx`: `encoder.onnx`, `decoder.onnx` (torch's dynamo ONNX exporter), for
  onnxruntime and other ONNX runtimes;
- `format=exported`: `encoder.pt2`, `decoder.pt2`, `torch.export` programs
  (`torch.export.load(path).module()`); TorchScript, deprecated upstream, is not offered.

The encoder takes float images `(N, C, H, W)` in [0, 1] (input `images`) and returns the codes
`(N, latent_dim)` (output `codes`: a VAE's posterior mean); the decoder the reverse (a VAE's
mean of p(x|z)). The batch size N is free. `export.yaml` beside them records the shapes.
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from omegaconf import DictConfig, OmegaConf

from aelab.cli import command
from aelab.errors import ConfigError
from aelab.validation import check_run_or_checkpoint

if TYPE_CHECKING:
    import torch

    from aelab.models import AutoencoderModule

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "exported": ".pt2"}
EXAMPLE_BATCH = 2  # traced batch size; a batch of 1 would be fixed into the graph


def halves(model: "AutoencoderModule") -> dict[str, tuple["torch.nn.Module", "torch.Tensor"]]:
    """The encoder and the decoder of `model` as modules of their own, each with an example
    input."""
    import torch

    class Half(torch.nn.Module):
        def __init__(self, method: str) -> None:
            super().__init__()
            self.model, self.method = model, method

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return getattr(self.model, self.method)(inputs)

    image_shape = tuple(model.hparams["image_shape"])
    images = torch.rand(EXAMPLE_BATCH, *image_shape)
    codes = torch.randn(EXAMPLE_BATCH, model.latent_dim)
    return {"encoder": (Half("encode").eval(), images), "decoder": (Half("decode").eval(), codes)}


def export_module(
    module: "torch.nn.Module",
    example: "torch.Tensor",
    names: tuple[str, str],
    path: Path,
    fmt: Literal["onnx", "exported"],
    opset: int | None = None,
) -> None:
    """Write `module` (one tensor in, one out, named `names`) with a free batch size."""
    import torch

    batch = torch.export.Dim("batch")
    dynamic = ({0: batch},)  # by position: the free batch size of the one input
    if fmt == "exported":
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        torch.export.save(program, path)
        return
    if fmt == "onnx":
        from aelab.loggers.extras import require

        require("onnxscript", "export", "format=onnx")
        torch.onnx.export(
            module,
            (example,),
            path,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,  # its ~30 progress lines at the user: the files are the result
        )


def export(cfg: DictConfig) -> list[Path]:
    """Write the encoder and the decoder of the checkpoint `cfg.ckpt_path` in `cfg.format`;
    returns their paths."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not allowed; it must be onnx or exported")
    check_run_or_checkpoint(cfg.ckpt_path)
    from aelab.evaluation.runs import load_run

    model = load_run(cfg.ckpt_path).model
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    io_names = {"encoder": ("images", "codes"), "decoder": ("codes", "images")}
    written = []
    for name, (module, example) in halves(model).items():
        path = out / f"{name}{FORMATS[cfg.format]}"
        export_module(module, example, io_names[name], path, cfg.format, cfg.get("opset"))
        written.append(path)
        log.info(f"Wrote {path}")
    signature = {
        "checkpoint": str(Path(cfg.ckpt_path).absolute()),
        "format": cfg.format,
        "encoder": {
            "images": ["N", *model.hparams["image_shape"]],
            "codes": ["N", model.latent_dim],
        },
        "decoder": {
            "codes": ["N", model.latent_dim],
            "images": ["N", *model.hparams["image_shape"]],
        },
        "images": "float32 in [0, 1]",
    }
    OmegaConf.save(OmegaConf.create(signature), out / "export.yaml")
    return written


main = command("export", export)  # `aelab-export`, `python -m aelab.export`


if __name__ == "__main__":
    main()
