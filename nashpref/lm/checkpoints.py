"""The one checkpoint path of training (tabular and language models alike).

A checkpoint is a directory ``ROOT/iteration-XXXX`` built in a temporary sibling by the backend
(``Backend.save``: the model, the optimizer and ``checkpoint.pt`` with the loop's counters, RNG states and the
hooks' state), fsynced, renamed into place, and only then named by the pointer file ``ROOT/latest`` (replaced
atomically). A kill at any moment leaves the previous checkpoint or the new one; older ones are removed after
the pointer has moved. For a language model ``model/`` is a ``save_pretrained`` directory (LoRA merged) and
``adapter.safetensors`` holds a LoRA adapter exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.io import atomic_write, publish_directory

FILENAME = "checkpoint.pt"
CHECKPOINTS = "checkpoints"
LATEST = "latest"


def save_state(directory: str | Path, state: dict) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) to ``directory/checkpoint.pt``
    atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write(directory / FILENAME, lambda handle: torch.save(state, handle))


def load_state(directory: str | Path) -> dict | None:
    """The state saved in ``directory/checkpoint.pt``, or None when there is none."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:      # truncated, overwritten or not a checkpoint: say which file, not a traceback
        raise BadInput(f"{path}: checkpoint cannot be read ({type(exc).__name__}: {exc}); remove "
                       f"{Path(directory).parent} to start over") from None


def save_checkpoint(root: str | Path, iteration: int, write: Callable[[Path], None], backend=None) -> Path:
    """Publish ``root/iteration-XXXX`` built by ``write(directory)``, point ``root/latest`` at it, then remove the
    older checkpoints; returns the new checkpoint's directory. A backend whose ``save`` is collective
    (``publishes``: every rank writes its shards, and it stages and renames the directory itself) is called
    on every rank; rank 0 then moves the pointer."""
    root = Path(root)
    name = f"iteration-{iteration:04d}"
    collective = backend is not None and getattr(backend, "publishes", False)
    if collective:
        if backend.is_main:
            root.mkdir(parents=True, exist_ok=True)
        backend.barrier()
        write(root / name)
        target = root / name
    else:
        root.mkdir(parents=True, exist_ok=True)
        target = publish_directory(root / name, write)
    if backend is None or backend.is_main:
        write_pointer(root, name)
        for entry in root.iterdir():
            if entry.is_dir() and entry.name != name:
                shutil.rmtree(entry, ignore_errors=True)
    if collective:
        backend.barrier()
    return target


def write_pointer(root: Path, name: str) -> None:
    """Name ``root/name`` as the latest complete checkpoint (one atomic replace)."""
    atomic_write(root / LATEST, name + "\n")


def latest_checkpoint(root: str | Path) -> Path | None:
    """The directory of the last complete checkpoint under ``root``, or None when there is none yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    directory = Path(root) / pointer.read_text(encoding="utf-8").strip()
    if not (directory / FILENAME).is_file():
        raise BadInput(f"{directory}: checkpoint is incomplete (no {FILENAME})")
    return directory


def latest_state(root: str | Path) -> dict | None:
    """The loop state of the last complete checkpoint under ``root`` (counters, RNGs, hooks), or None."""
    directory = latest_checkpoint(root)
    return None if directory is None else load_state(directory)


# ---- language-model weights -----------------------------------------------------------------------------------
def has_adapter(policy) -> bool:
    model = policy.model
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def write_model(directory: Path, policy) -> None:
    """``directory/model`` (``save_pretrained``, LoRA merged) and, with LoRA, the adapter exactly."""
    policy.save_pretrained(directory / "model")
    if has_adapter(policy):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, directory / "adapter.safetensors")


def restore_weights(policy, directory: Path) -> None:
    """Load a checkpoint's trainable weights into ``policy`` exactly (the LoRA adapter, or every weight)."""
    from safetensors.torch import load_file as load_safetensors

    def load_file(path: Path) -> dict[str, Tensor]:
        try:
            return load_safetensors(path)
        except Exception as exc:    # a corrupt weights file is bad input, named, not a traceback
            raise BadInput(f"{path}: checkpoint weights cannot be read ({type(exc).__name__}: {exc})") from None

    if has_adapter(policy):
        policy.load_state_dict(load_file(directory / "adapter.safetensors"))
        return
    saved: dict[str, Tensor] = {}
    for file in sorted((directory / "model").glob("*.safetensors")):
        saved |= load_file(file)
    state = {}
    for name in policy.trainable_state():
        key = name.removeprefix("model.")
        if key not in saved:
            raise BadInput(f"{directory}: checkpoint lacks weight {key!r}")
        state[name] = saved[key]
    policy.load_state_dict(state)
