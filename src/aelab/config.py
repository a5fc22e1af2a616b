"""Where the configs live, which folder a run writes to, and what Hydra needs before it composes.

The configs live in `configs/` at the repository's root and ship inside the package as
`aelab.configs`, so an installed wheel finds them as an editable clone does; a user adds
groups of their own with `--config-dir DIR` or `hydra.searchpath=[file://DIR]`, without
touching the package.
"""

import hashlib
import os
import re
import time
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

from omegaconf import OmegaConf

# the package aelab.configs: configs/ at the clone's root (editable install) or in the wheel
CONFIG_DIR = Path(str(files("aelab.configs")))
CONFIG_MODULE = "pkg://aelab.configs"  # what `@hydra.main(config_path=...)` is given
RESUMABLE = ("last.ckpt", "interrupted.ckpt")
RUN_STAMP_KEY = "aelab/run_stamp"
RUN_CONFIG = "config.yaml"  # a run's resolved config, in its folder (evaluation reads it)
METRICS_FILE = "metrics.json"  # a finished run's final metrics, in its folder (aelab.load_run)
SLURM_MARKER = ".slurm_job"  # the SLURM job that started a run, so that its requeue finds it


def requeued_slurm_job() -> str | None:
    """This SLURM job's id if SLURM requeued it (it then goes on with its own run)."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
        return os.environ.get("SLURM_JOB_ID")
    return None


def newest_checkpoint(folder: Path) -> Path | None:
    """The newer of `last.ckpt` (end of the last full epoch) and `interrupted.ckpt` (Ctrl-C,
    SIGTERM) in a run's `checkpoints/` folder, or None."""
    found = [folder / name for name in RESUMABLE if (folder / name).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


MAX_NAME = 64  # characters of a run name; a longer one keeps its start and a hash of the rest
UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")  # what a folder name does not keep
UNSAFE_IN_PATHS = re.compile(r"[^A-Za-z0-9._+-]+")  # nor a run folder, whose paths are overrides


def is_path(key: str) -> bool:
    """Whether override `key` names a folder or file (`paths.*`, `data.source.path`, `ckpt_path`):
    never what tells runs apart."""
    last = key.rsplit(".", 1)[-1]
    return key.split(".", 1)[0] in ("paths", "hydra") or last.endswith(("dir", "path", "_from"))


def parse_overrides(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted tail that no other key shares and that is not a bare list
    index: `model.latent_dim` -> `latent_dim`, `model.net.hidden_dims.0` -> `hidden_dims.0`."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            clash = any(other != key and f".{other}".endswith(f".{tail}") for other in keys)
            if not parts[-n].isdigit() and not clash:
                break
        short[key] = tail
    return short


def short_value(value: str) -> str:
    """Floats to four significant digits (Optuna draws 0.000345678...), the rest as given."""
    if re.fullmatch(r"-?\d*\.\d*(e-?\d+)?|-?\d+e-?\d+", value):
        return f"{float(value):.4g}"
    return value.strip("[]'\"")


def overrides_name(overrides: list[str], named: list[str], in_paths: bool = False) -> str:
    """A name made of the overrides of the keys `named`: `key=value` of each, joined by commas,
    keys shortened (`short_keys`), safe as a folder name, at most MAX_NAME characters (a longer
    one keeps its start and ends in a hash of the whole); "" if none. `in_paths`: `key-value`
    joined by `+`, since a path holding `=` or `,` does not parse as a Hydra override
    (`ckpt_path=<run>/checkpoints/last.ckpt`)."""
    chosen = {o.key_or_group: o for o in parse_overrides(overrides) if o.key_or_group in named}
    keys = [key for key in named if key in chosen]
    short = short_keys(keys)
    equals, comma, unsafe = ("-", "+", UNSAFE_IN_PATHS) if in_paths else ("=", ",", UNSAFE)
    parts = [
        f"{short[key]}{equals}{short_value(chosen[key].get_value_element_as_str())}" for key in keys
    ]
    name = unsafe.sub("_", comma.join(parts))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name


def run_choices(run: Path) -> dict[str, str | None]:
    """The `model=` and `data=` a run was started with (from Hydra's record in its folder)."""
    record = run / ".hydra" / "hydra.yaml"
    if not record.is_file():
        return {"model": None, "data": None}
    choices = OmegaConf.load(record).hydra.runtime.choices
    return {group: choices.get(group) for group in ("model", "data")}


def resumable_runs(runs_dir: str | Path) -> list[Path]:
    """The runs under `runs_dir` that have a checkpoint to resume, the newest first."""
    runs = [p.parent for p in Path(runs_dir).glob("*/checkpoints") if newest_checkpoint(p)]
    newest = {run: newest_checkpoint(run / "checkpoints") for run in runs}
    return sorted(runs, key=lambda run: Path(newest[run] or run).stat().st_mtime, reverse=True)


def run_dir(
    ckpt_path: str | None,
    runs_dir: str,
    model: str | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
) -> str:
    """The run's folder: a resumed run goes on in the folder of its checkpoint (`ckpt_path=last`:
    the newest run under `runs_dir` of the same `model=` and `data=` that has one; a requeued
    SLURM job: the run it started), a new run gets `runs_dir/<timestamp>_<overrides>`, named by
    its command line's overrides but folders (`2026-12-06_14-32-38_model-vae+data-fashion`), so
    that `tensorboard --logdir logs` tells runs apart."""
    job = requeued_slurm_job()
    if ckpt_path is None and job:
        for marker in Path(runs_dir).glob(f"*/{SLURM_MARKER}"):
            if marker.read_text().strip() == job:
                return str(marker.parent.absolute())
    if ckpt_path == "last":
        wanted = {"model": model, "data": data}
        for run in resumable_runs(runs_dir):
            if run_choices(run) == wanted:
                return str(run.absolute())
    elif ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).absolute().parent.parent)
    given = [o for o in parse_overrides(list(overrides)) if not o.is_delete()]
    named = [o.key_or_group for o in given if not is_path(o.key_or_group)]
    name = overrides_name(list(overrides), named, in_paths=True)
    return str(Path(runs_dir, f"{run_stamp()}_{name}" if name else run_stamp()).absolute())


def output_subdir(ckpt_path: str | None) -> str:
    """Where Hydra writes the run's composed config: `.hydra/` for a new run; a resumed run
    keeps the original and writes its own under `.hydra/resumed/<timestamp>/`."""
    return f".hydra/resumed/{run_stamp()}" if ckpt_path else ".hydra"


@cache
def run_stamp() -> str:
    """The timestamp that names a new run's folder, the same in every process of one run.

    Lightning's own DDP launcher hands its folder to the processes it starts; processes started
    by torchrun or srun each compose the config, perhaps in different seconds, so torchrun's take
    rank 0's stamp from the rendezvous store torchrun runs, and srun's name it after the job.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_ADDR" in os.environ:
        return _shared_stamp()
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def _shared_stamp() -> str:
    """Rank 0's timestamp, through torchrun's store (one key per restart of the job)."""
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=300),
    )
    key = f"{RUN_STAMP_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if os.environ.get("RANK", "0") == "0":
        store.set(key, time.strftime("%Y-%m-%d_%H-%M-%S"))
    return store.get(key).decode()


def user_cache_dir() -> str:
    """The platform's cache folder for aelab (~/.cache/aelab on Linux, ~/Library/Caches/aelab
    on macOS, %LOCALAPPDATA%\\aelab\\Cache on Windows): one cache per user, whatever folder a
    run starts in."""
    from platformdirs import user_cache_dir as platform_cache_dir

    return platform_cache_dir("aelab", appauthor=False)


def help_groups() -> str:
    """`--help`'s config groups: those this command composes (`group: option, ...`), where
    Hydra's own list holds every group it finds (`train.py --help` listed results' `table`)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    loader = GlobalHydra.instance().config_loader()
    groups = sorted(g for g in HydraConfig.get().runtime.choices if not g.startswith("hydra"))
    return "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in groups)


def prepare_hydra() -> None:
    """Register the resolvers the configs use."""
    for name, resolver in (
        ("aelab_run_dir", run_dir),
        ("aelab_output_subdir", output_subdir),
        ("aelab_user_cache_dir", user_cache_dir),
        ("aelab_help_groups", help_groups),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def writable_dir_error(key: str, folder: str | Path) -> str | None:
    """Why `folder` cannot hold this run's files, or None if it can (it is created if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".aelab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"{key}={str(folder)!r} is not a writable folder ({err.strerror})"
    return None
