"""Generation entry point: `python -m aelab.generate ckpt_path=PATH` (or `aelab-generate ...`).

Writes PNG grids into its run folder (`hydra.run.dir=...` moves it):

- `samples.png`: images decoded from draws of the model's prior (generative families only: not
  the autoencoders or VQ-VAE; needs no data);
- `reconstructions.png`: test images (top row) above their reconstructions (bottom row);
- `interpolations.png`: each row decodes evenly spaced points on the line between the codes
  of two test images (the first and last columns are those images' reconstructions);
- `traversals.png`: one row per latent dimension, the most used first (ordered by the KL of
  q(z|x) against N(0, I) on test images; the codes' variance without a Gaussian posterior), each
  swept from a test image's code and labelled with its KL and, on data with ground-truth factors
  (data=shapes, data=dsprites), the factor it is most informative about (normalised mutual
  information, as MIG computes it), with that matrix as `mutual_information.png`.

Test images come from the training run's data folder unless `data_dir=...` names another;
with `num_reconstructions=0 num_interpolations=0 traversals.steps=0` no data is read at all.
"""

import logging
from pathlib import Path

from omegaconf import DictConfig

from aelab.cli import command
from aelab.errors import ConfigError
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
        if n > 0 or pairs > 0 or cfg.traversals.steps > 0:
            datamodule = run.datamodule(cfg.get("data_dir"))
            test_images = datamodule.test_set.images
            x = to_float(test_images[: max(n, 2 * pairs)])
            if n > 0:
                save(torch.cat([x[:n], model.reconstruct(x[:n])]), "reconstructions.png", nrow=n)
            if pairs > 0:
                between = interpolate(model, x[:pairs], x[pairs : 2 * pairs], steps)
                save(between, "interpolations.png", nrow=steps)
            if cfg.traversals.steps > 0:
                written += traversal_pictures(cfg, model, datamodule, out)
    for path in written:
        log.info(f"Wrote {path}")
    return written


def traversal_pictures(cfg: DictConfig, model, datamodule, out: Path) -> list[Path]:
    """`traversals.png` (rows labelled by factor on ground-truth data, by KL alone otherwise)
    and, on ground-truth data, `mutual_information.png`."""
    import torch
    from torchvision.utils import save_image

    from aelab.data import to_float
    from aelab.evaluation.ground_truth import factor_information, ground_truth
    from aelab.evaluation.traversals import factor_traversal, information_figure

    opts = cfg.traversals
    if opts.steps < 2 or opts.max_rows < 1 or opts.images < 1:
        raise ConfigError(
            f"traversals.steps={opts.steps}, max_rows={opts.max_rows}, images={opts.images}: "
            "steps 0 (none) or at least 2, max_rows and images at least 1"
        )
    data = ground_truth(datamodule)
    information, names = None, tuple[str, ...]()
    if data is not None:
        information = factor_information(model, data, opts.points, opts.bins, cfg.seed)
        names = tuple(data.names)
    x = to_float(datamodule.test_set.images[: opts.images].to(model.device))
    with torch.no_grad():
        grid, rows = factor_traversal(
            model, x, information, names, opts.steps, opts.span, opts.max_rows
        )
    save_image(grid, out / "traversals.png")
    if information is None:
        return [out / "traversals.png"]
    figure = information_figure(information, names, rows)
    figure.savefig(out / "mutual_information.png")
    return [out / "traversals.png", out / "mutual_information.png"]


main = command("generate", generate)  # `aelab-generate`, `python -m aelab.generate`


if __name__ == "__main__":
    main()
