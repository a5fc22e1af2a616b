"""Generation entry point: `python -m aelab.generate ckpt_path=PATH` (or `aelab-generate ...`).

Writes PNG grids into its run folder (`hydra.run.dir=...` moves it):

- `samples.png`: images decoded from draws of the model's prior (generative families only: not
  the autoencoders or VQ-VAE; needs no data);
- `reconstructions.png`: test images (top row) above their reconstructions (bottom row);
- `interpolations.png`: each row decodes evenly spaced points on the line between the codes
  of two test images (the first and last columns are those images' reconstructions).

Test images come from the training run's data folder unless `data_dir=...` names another;
with `num_reconstructions=0 num_interpolations=0` no data is read at all.
"""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from aelab.cli import run_app
from aelab.config import CONFIG_MODULE
from aelab.errors import report_user_errors
from aelab.validation import check_run_or_checkpoint

log = logging.getLogger(__name__)


def generate(cfg: DictConfig) -> list[Path]:
    """Write the PNG grids of the checkpoint `cfg.ckpt_path`; returns their paths."""
    check_run_or_checkpoint(cfg.ckpt_path)
    import torch
    from torchvision.utils import save_image

    from aelab.data import to_float
    from aelab.evaluation.pictures import interpolate
    from aelab.evaluation.runs import load_run

    torch.manual_seed(cfg.seed)
    run = load_run(cfg.ckpt_path)
    model = run.model
    out = Path(cfg.paths.output_dir)
    written = []

    def save(images: torch.Tensor, name: str, nrow: int) -> None:
        save_image(images.float().cpu(), out / name, nrow=nrow, padding=2, pad_value=1)
        written.append(out / name)

    with torch.no_grad():
        if hasattr(model, "sample"):
            # models with a prior define sample(); checked by hasattr above
            save(model.sample(cfg.num_samples), "samples.png", nrow=int(cfg.num_samples**0.5))  # type: ignore[operator]
        else:
            name = type(model).__name__
            log.info(f"{name} is not a generative model (no prior to sample from): no samples.png")
        n, pairs, steps = cfg.num_reconstructions, cfg.num_interpolations, cfg.interpolation_steps
        if n > 0 or pairs > 0:
            test_images = run.datamodule(cfg.get("data_dir")).test_set.images
            x = to_float(test_images[: max(n, 2 * pairs)])
            if n > 0:
                save(torch.cat([x[:n], model.reconstruct(x[:n])]), "reconstructions.png", nrow=n)
            if pairs > 0:
                between = interpolate(model, x[:pairs], x[pairs : 2 * pairs], steps)
                save(between, "interpolations.png", nrow=steps)
    for path in written:
        log.info(f"Wrote {path}")
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    with report_user_errors():
        generate(cfg)


def main() -> None:
    """Console-script entry point (`aelab-generate`, `python -m aelab.generate`)."""
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
