"""A trained run, rebuilt from its checkpoint and the config saved beside it."""

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aelab.data import ImageDataModule
from aelab.errors import ConfigError
from aelab.models import AutoencoderModule
from aelab.validation import check_checkpoint


def load_run(
    ckpt_path: str | Path, data_dir: str
) -> tuple[DictConfig, AutoencoderModule, ImageDataModule]:
    """The run's config, its model with the checkpoint's weights, and its datamodule reading
    from `data_dir`. Needs `<run>/.hydra/config.yaml` beside `<run>/checkpoints/`."""
    ckpt_path = Path(ckpt_path)
    config_file = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(
            f"ckpt_path={str(ckpt_path)!r}: no saved run config at {config_file}; give a "
            "checkpoint inside its run folder (<run>/checkpoints/*.ckpt)"
        )
    run_cfg = OmegaConf.load(config_file)
    run_cfg.paths.data_dir = data_dir
    datamodule = instantiate(run_cfg.data)
    datamodule.prepare_data()
    model = instantiate(run_cfg.model, image_shape=list(datamodule.image_shape), _convert_="all")
    check_checkpoint(ckpt_path, model)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    return run_cfg, model.eval(), datamodule
