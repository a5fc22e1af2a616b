"""A trained run, rebuilt from its checkpoint and the config saved beside it."""

from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aelab.config import RUN_CONFIG
from aelab.data import ImageDataModule
from aelab.errors import ConfigError
from aelab.models import AutoencoderModule
from aelab.validation import check_checkpoint, load_checkpoint


@dataclass
class Run:
    """A run's resolved config and its model with the checkpoint's weights (on the CPU)."""

    config: DictConfig
    model: AutoencoderModule

    def datamodule(self, data_dir: str | None = None) -> ImageDataModule:
        """The run's data, read from `data_dir` or else from the run's own `paths.data_dir`,
        prepared and set up (only what needs images asks for it: samples need none)."""
        data = OmegaConf.to_container(self.config.data)
        if data_dir is not None:
            data["data_dir"] = data_dir
        datamodule = instantiate(data, seed=self.config.get("seed") or 0)
        datamodule.prepare_data()
        datamodule.setup("test")
        return datamodule


def load_run(ckpt_path: str | Path) -> Run:
    """The run of `<run>/checkpoints/NAME.ckpt`, from `<run>/config.yaml`. The image shape
    comes from the checkpoint, so no data is read here."""
    ckpt_path = Path(ckpt_path)
    config_file = ckpt_path.absolute().parent.parent / RUN_CONFIG
    if not config_file.is_file():
        raise ConfigError(
            f"ckpt_path={str(ckpt_path)!r}: no saved run config at {config_file}; give a "
            "checkpoint inside its run folder (<run>/checkpoints/*.ckpt)"
        )
    config = OmegaConf.load(config_file)
    checkpoint = load_checkpoint(ckpt_path)
    image_shape = list(checkpoint["hyper_parameters"].get("image_shape", ()))
    model = instantiate(config.model, image_shape=image_shape, _convert_="all")
    model.load_state_dict(check_checkpoint(ckpt_path, model, checkpoint)["state_dict"])
    return Run(config, model.eval())
