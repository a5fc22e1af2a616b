"""Where the configs live, and what Hydra needs before it composes them."""

import os
import re
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"
RESUMABLE = ("last.ckpt", "interrupted.ckpt")


def run_dir(ckpt_path: str | None, runs_dir: str, timestamp: str) -> str:
    """The run's folder: a resumed run goes on in the folder of its checkpoint (`ckpt_path=last`:
    the newest run under `runs_dir` that has one), a new run gets `runs_dir/timestamp`."""
    if ckpt_path == "last":
        found = [p for name in RESUMABLE for p in Path(runs_dir).glob(f"*/checkpoints/{name}")]
        if found:
            return str(max(found, key=lambda p: p.stat().st_mtime).parent.parent)
    elif ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).absolute().parent.parent)
    return f"{runs_dir}/{timestamp}"


def prepare_hydra() -> None:
    """Expose the repository root to the configs (`paths.root_dir`) unless the user set one,
    and register the resolvers they use."""
    os.environ.setdefault("AELAB_ROOT", str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("aelab_run_dir"):
        OmegaConf.register_new_resolver("aelab_run_dir", run_dir)


HELP_FLAGS = ("--help", "-h")


def run_app(config_name: str, hydra_main: Callable[[], object]) -> None:
    """What every entry point does: prepare Hydra, answer `--help` quickly, else call the
    module's `@hydra.main` function (kept in each module: Hydra names the job after it)."""
    prepare_hydra()
    help_text = app_help(config_name, sys.argv[1:])
    if help_text is not None:
        print(help_text)
        return
    hydra_main()


def app_help(config_name: str, args: Sequence[str]) -> str | None:
    """Hydra's `--help` text for `args` (the help flag and plain overrides), or None when `args`
    ask for something else and Hydra should answer.

    Hydra's own help lists every config group, its own and its plugins' too, deep-copying its
    config repository once per group (2 s here, longer than composing the config); ours all
    live in `configs/`, so a directory listing gives the same `$APP_CONFIG_GROUPS`.
    """
    overrides = [a for a in args if a not in HELP_FLAGS]
    if len(overrides) == len(args) or any(a.startswith("-") for a in overrides):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except HydraException as err:  # an unknown option: what Hydra says when it runs
            raise SystemExit(f"error: {err}") from None
    template = cfg.hydra.help.template
    if re.search(r"\$\{?(FLAGS_HELP|HYDRA_CONFIG_GROUPS)\b", template):
        return None
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return string.Template(template).substitute(
        APP_CONFIG_GROUPS=config_groups(), CONFIG=OmegaConf.to_yaml(job)
    )


def config_groups() -> str:
    """`group: option, option` lines for the groups in `configs/` (not Hydra's own)."""
    lines = []
    for folder in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIG_DIR).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and group.split("/")[0] != "hydra":
            lines.append(f"{group}: {', '.join(options)}\n")
    return "".join(lines)


def writable_dir_error(key: str, folder: str | Path) -> str | None:
    """Why `folder` cannot hold this run's files, or None if it can (it is created if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".aelab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"{key}={str(folder)!r} is not a writable folder ({err.strerror})"
    return None


class CheckOutputDir(Callback):
    """Hydra callback: an unwritable output folder is one clear line, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)

    @staticmethod
    def _check(key: str, folder: str) -> None:
        error = writable_dir_error(key, folder)
        if error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1)
