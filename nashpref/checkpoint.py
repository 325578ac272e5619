"""Atomic checkpoints: a crash at any moment leaves either the previous checkpoint or the new one, never half.

The state is written to a temporary file in the same directory, flushed to disk, then renamed over
``checkpoint.pt`` with ``os.replace`` (atomic on POSIX and Windows); the directory is fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FILENAME = "checkpoint.pt"


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) to ``directory/checkpoint.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILENAME
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(directory)
    return target


def load_checkpoint(directory: str | Path) -> dict | None:
    """The last state saved in ``directory``, or None when there is none yet."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)


def fsync_path(directory: Path) -> None:
    """fsync a file or directory (a directory's fsync makes a rename in it durable); a no-op off POSIX."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
