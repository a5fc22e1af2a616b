"""Where the configs live, and what Hydra needs before it composes them."""

import os
import sys
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
