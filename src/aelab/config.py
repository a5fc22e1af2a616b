"""Where the configs live, so that every entry point and test composes the same tree."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"


def export_project_root() -> None:
    """Expose the repository root to the configs (`paths.root_dir`) unless the user set one."""
    os.environ.setdefault("AELAB_ROOT", str(PROJECT_ROOT))
