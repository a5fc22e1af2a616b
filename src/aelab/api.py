"""The Python API, for notebooks and scripts: compose a config as `python train.py` does, train
it, and load a finished run.

    cfg = aelab.compose(["model=vae", "debug=fast"])
    run = aelab.fit(cfg)                     # or aelab.load_run("logs/train/runs/<stamp>")
    z = run.encode(run.test_images(8))

Errors are raised (`aelab.errors.ConfigError`, ...) rather than printed: the caller decides.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from aelab.config import CONFIG_DIR, METRICS_FILE, RESUMABLE, RUN_CONFIG, prepare_hydra, run_dir
from aelab.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from aelab.data import ImageDataModule
    from aelab.models import AutoencoderModule


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config that `python train.py OVERRIDES` trains (`config_name`: eval, generate, export
    for the other entry points), with its run folder chosen as the command line chooses it (a
    fresh `<log_dir>/<task_name>/runs/<timestamp>`, or the folder of `ckpt_path`); paths are
    made absolute."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    prepare_hydra()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    # Hydra's record of the choices, as a command line has it: HParams shows `model=vae` as
    # `vae` (not the class name), `ckpt_path=last` finds the last run of the same model= data=
    HydraConfig.instance().set_config(cfg)
    choices = cfg.hydra.runtime.choices
    with open_dict(cfg):
        del cfg["hydra"]
    paths = cfg.paths
    if "hydra:" in str(cast(dict, OmegaConf.to_container(paths))["output_dir"]):
        runs = Path(paths.log_dir, cfg.task_name, "runs")
        ckpt_path = cfg.get("ckpt_path")
        paths.output_dir = (
            run_dir(ckpt_path, str(runs), choices.get("model"), choices.get("data"))
            if ckpt_path
            else fresh_folder(runs)
        )
    for key in ("data_dir", "log_dir", "output_dir"):
        paths[key] = str(Path(paths[key]).expanduser().absolute())
    return cfg


def fresh_folder(runs: Path) -> str:
    """A new run folder under `runs`, named by the time (`-1`, `-2`, ... for more in a second)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = runs / stamp, 0
    while folder.exists():
        n += 1
        folder = runs / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    return str(folder)


def fit(cfg: DictConfig) -> "Run":
    """Train `cfg` (from `compose`) in its run folder, test its best checkpoint, and return the
    finished run."""
    from aelab.training import fit_and_test

    fit_and_test(cfg)
    return load_run(cfg.paths.output_dir)


@dataclass
class Run:
    """A finished run: its folder, the checkpoint it tested, its config, its model (with that
    checkpoint's weights, on the CPU, in eval mode) and its final metrics; the data is read when
    first asked for (from `data_dir`, else the run's own)."""

    folder: Path
    checkpoint: Path
    config: DictConfig
    model: "AutoencoderModule"
    metrics: dict[str, float]
    data_dir: str | None = field(default=None, repr=False)

    @cached_property
    def datamodule(self) -> "ImageDataModule":
        """The run's data, set up for testing (training and validation sets too)."""
        from aelab.evaluation.runs import Run as SavedRun

        return SavedRun(self.config, self.model).datamodule(self.data_dir)

    def test_images(self, n: int) -> "torch.Tensor":
        """The first `n` test images, as floats in [0, 1]."""
        from aelab.data import to_float

        return to_float(self.datamodule.test_set.images[:n].cpu())

    def encode(self, x: "torch.Tensor") -> "torch.Tensor":
        """The codes of images `x` (floats in [0, 1], or uint8 pixels)."""
        import torch

        from aelab.data import to_float

        with torch.no_grad():
            x = to_float(x) if x.dtype == torch.uint8 else x
            return self.model.encode(x.to(self.model.device))

    def decode(self, z: "torch.Tensor") -> "torch.Tensor":
        """The images that codes `z` decode to."""
        import torch

        with torch.no_grad():
            return self.model.decode(z.to(self.model.device))


def load_run(path: str | Path, data_dir: str | None = None) -> Run:
    """The finished run of a run folder (its tested, best checkpoint) or of a checkpoint inside
    one (`<run>/checkpoints/NAME.ckpt`); `data_dir` reads its data from another folder. The
    metrics are the run's final ones for its tested checkpoint, else the checkpoint's own
    validation metrics."""
    from aelab.evaluation.runs import load_run as load_saved_run

    path = Path(path).absolute()
    if not path.exists():
        raise ConfigError(f"{path}: no such run folder or checkpoint")
    folder = path if path.is_dir() else path.parent.parent
    metrics = saved_metrics(folder)
    checkpoint = tested_checkpoint(folder, metrics) if path.is_dir() else path
    saved = load_saved_run(checkpoint)
    if path.is_file() and not (metrics and is_tested(folder, metrics, path)):
        metrics = checkpoint_metrics(checkpoint)
    return Run(folder, checkpoint, saved.config, saved.model, metrics, data_dir)


def is_tested(folder: Path, metrics: dict[str, float], checkpoint: Path) -> bool:
    """Whether `checkpoint` is the one its run tested (the one `metrics` belong to)."""
    try:
        return tested_checkpoint(folder, metrics) == checkpoint
    except ConfigError:
        return False


def checkpoint_metrics(checkpoint: Path) -> dict[str, float]:
    """The validation metrics a checkpoint was saved with, and its epoch as `best_epoch`."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return {"best_epoch": float(state["epoch"]), **state.get("val_metrics", {})}


def saved_metrics(folder: Path) -> dict[str, float]:
    """The final metrics a run left in its folder (`metrics.json`; a sweep job's `result.json`),
    or none."""
    from aelab.sweeps.jobs import read_record

    if (folder / METRICS_FILE).is_file():
        return json.loads((folder / METRICS_FILE).read_text())
    record = read_record(folder)
    return dict(record["metrics"]) if record else {}


def tested_checkpoint(folder: Path, metrics: dict[str, float]) -> Path:
    """The checkpoint a run folder's run tested: that of its `best_epoch`, else its only one
    that is not for resuming."""
    from aelab.evaluation.runs import tested_checkpoint as of_epoch

    if not (folder / RUN_CONFIG).is_file():
        raise ConfigError(f"{folder}: not a run folder (no {RUN_CONFIG})")
    if "best_epoch" in metrics:
        return of_epoch(folder, metrics["best_epoch"]).absolute()
    candidates = [
        p for p in sorted((folder / "checkpoints").glob("*.ckpt")) if p.name not in RESUMABLE
    ]
    if len(candidates) == 1:
        return candidates[0].absolute()
    raise ConfigError(
        f"{folder}: {len(candidates)} checkpoints and no best_epoch in {METRICS_FILE} naming the "
        "tested one; give the checkpoint itself (<run>/checkpoints/NAME.ckpt)"
    )
