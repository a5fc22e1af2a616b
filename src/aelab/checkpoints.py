"""Checkpoints that a kill at any instant cannot damage, and the newest intact one to resume.

Lightning's own writer renames a temporary file into place, but without an fsync (a power loss
can leave an empty or partial file under the final name) and with a plain copy when the two are
on different filesystems. `AtomicCheckpointIO` (the Trainer's checkpoint plugin in
`trainer/default.yaml`) writes beside the target, fsyncs, renames and fsyncs the folder.
"""

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aelab.errors import ConfigError, WriteFailed

log = logging.getLogger(__name__)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a reader, or a crash at any instant, sees the old file
    or the new one, never part of one. A failed write leaves the old file and no temporary."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself reaches the disk
        finally:
            os.close(folder)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise WriteFailed(
            f"could not write {path} ({err.strerror or err}); the previous checkpoint is intact"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic and durable (see the module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options: {storage_options}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getvalue())


def newest_intact(folder: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `folder` that loads, with its contents. Newer ones that do not
    (damaged by a disk, or by a writer that is not atomic) are set aside as `NAME.damaged`,
    with a warning, so that the resumed run writes its `last.ckpt` afresh."""
    from aelab.validation import load_checkpoint

    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except ConfigError as err:
            damaged = path.with_name(f"{path.name}.damaged")
            path.replace(damaged)
            log.warning(f"skipping a checkpoint that does not load, kept as {damaged}: {err}")
    return None
