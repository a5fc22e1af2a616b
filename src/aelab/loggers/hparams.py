"""What a run is compared by: the keys a sweep varies, the run's name made of them, and the
hyperparameters of TensorBoard's HParams view.

Only Hydra and OmegaConf are used here. A sweep's varied keys are the sweep overrides of its
command line (recorded by Hydra's basic sweeper in `<sweep dir>/multirun.yaml`) and the keys
of `hydra.sweeper.params` (where Optuna's search space lives); folders never count.
"""

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from aelab.config import CONFIG_DIR, is_path, overrides_name, parse_overrides

if TYPE_CHECKING:
    from hydra.conf import HydraConf

SINGLE_RUN = "tensorboard"  # the run folder of a single run, or of a sweep that varies nothing
# Compared by every run, after the swept keys. A config group (model, net, optimizer, scheduler)
# shows the option chosen (`vae`), a config node with a _target_ its class (`VAE`).
COMPARED = (
    "model",
    "net",
    "model.latent_dim",
    "model.net.hidden_dims",
    "model.net.channels",
    "model.net.activation",
    "model.net.batch_norm",
    "model.init",
    "model.output_bias",
    "model.likelihood",
    "model.gaussian_std",
    "model.beta",
    "model.kl_warmup_epochs",
    "model.noise",
    "model.noise_level",
    "model.latent_activation",
    "model.output_activation",
    "optimizer",
    "model.optimizer.lr",
    "model.optimizer.weight_decay",
    "scheduler",
    "data.source.name",
    "data.batch_size",
    "trainer.max_epochs",
    "trainer.precision",
    "seed",
    "tags",
)


def _hydra() -> "HydraConf | None":
    """This job's Hydra config in a multirun; None in a single run or outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def swept_keys() -> list[str]:
    """The keys this job's multirun varies, in the order given (none outside a multirun)."""
    hydra_cfg = _hydra()
    if hydra_cfg is None:
        return []
    command_line: list[str] = []
    multirun = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if multirun.is_file():
        command_line = list(OmegaConf.load(multirun).hydra.overrides.task)
    # a search dimension that the command line fixes (data.batch_size=32) does not vary
    fixed = {o.key_or_group for o in parse_overrides(command_line) if not o.is_sweep_override()}
    params = hydra_cfg.sweeper.get("params") or {}
    searched = [f"{key}={value}" for key, value in params.items() if key not in fixed]
    keys = [
        o.key_or_group for o in parse_overrides(command_line + searched) if o.is_sweep_override()
    ]
    return [key for key in dict.fromkeys(keys) if not is_path(key)]


def name_of(overrides: list[str], swept: list[str]) -> str:
    """The run name for a job with these overrides (`aelab.config.overrides_name`); SINGLE_RUN
    if none of them is swept."""
    return overrides_name(overrides, swept) or SINGLE_RUN


def run_name() -> str:
    """This run's TensorBoard name: in a multirun, the overrides that tell its jobs apart
    (`latent_dim=8`); SINGLE_RUN otherwise."""
    hydra_cfg = _hydra()
    if hydra_cfg is None:
        return SINGLE_RUN
    return name_of(list(hydra_cfg.overrides.task), swept_keys())


def _choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def group_node(group: str) -> str | None:
    """The config node that config group `group` fills: the `# @package` of its YAML files
    (`net` fills `model.net`), else its name; None if there is no such group."""
    files = sorted((CONFIG_DIR / group).glob("*.yaml"))
    if not files:
        return None
    header = re.search(r"^# @package (\S+)", files[0].read_text(), re.MULTILINE)
    return header[1] if header else group


def _value(cfg: DictConfig, name: str, choices: dict[str, Any]) -> Any:
    """What HParams shows for `name`: a group's chosen option (outside Hydra, the class of the
    node it fills), a _target_'s class name, a list as text, a value as it is (None: not set)."""
    if name in choices:
        return choices[name] or "none"
    node_key = group_node(name)
    node = OmegaConf.select(cfg, node_key or name)
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        return target.rsplit(".", 1)[-1] if target else None
    if node_key and node is None:
        return "none"
    if isinstance(node, ListConfig) and name == "tags":
        return ",".join(map(str, node)) or None
    if isinstance(node, ListConfig):
        return str(list(node))
    return node


def compared_hparams(cfg: DictConfig, seed: int) -> dict[str, Any]:
    """The hyperparameters runs are compared by, flat (`model.latent_dim`), the swept keys
    first, then COMPARED; unset ones left out. `seed` is the one used (a null seed is drawn)."""
    choices = _choices()
    swept = swept_keys()
    # one column per searched key: a swept `model.net.hidden_dims.0` replaces the whole list
    compared = [
        name
        for name in COMPARED
        if not any(re.fullmatch(rf"{re.escape(name)}\.\d+", key) for key in swept)
    ]
    values = {name: _value(cfg, name, choices) for name in [*swept, *compared]}
    values["seed"] = seed
    return {name: value for name, value in values.items() if value is not None}
