"""Everything nashpref writes goes through here: one atomic writer (a temporary file in the same directory,
flushed and fsynced, then renamed over the target), JSON and JSONL on top of it, directories published whole
(built in a temporary sibling, fsynced, renamed into place), and an output directory that appears only once
everything in it is complete, so bad input or a crash never leaves a half-written file or DIR."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from torch import Tensor

from nashpref.errors import BadInput


def jsonable(value: Any) -> Any:
    """Tensors become (nested) lists; non-finite floats become None so the file stays strict JSON."""
    if isinstance(value, Tensor):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return value


def atomic_write(path: str | Path, write: Callable[[IO], None] | str | bytes) -> Path:
    """Replace ``path`` atomically: ``write(handle)`` (or the given text / bytes) goes to a temporary file in the
    same directory, which is flushed, fsynced and renamed over ``path``; the directory is fsynced so the rename
    survives a power cut. On any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    binary = not isinstance(write, str)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            if callable(write):
                write(handle)
            else:
                handle.write(write)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write(path, "".join(json.dumps(jsonable(r), allow_nan=False, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def fsync_path(path: Path) -> None:
    """fsync a file or directory (a directory's fsync makes a rename in it durable); a no-op off POSIX."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file and folder below ``directory``, deepest first, then ``directory`` itself."""
    for path in sorted(directory.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(directory)


def publish_directory(target: Path, write: Callable[[Path], None]) -> Path:
    """Build ``target`` with ``write(staging)`` in a temporary sibling, fsync it, then rename it into place (an
    older ``target`` is removed first): a kill at any moment leaves no half-written ``target``."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(staging)
        fsync_tree(staging)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# ---- the output directory ----------------------------------------------------------------------------------------
def check_output_dir(out: Path) -> None:
    """Fail early (before any work) when DIR cannot be an output directory; creates nothing."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a directory")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInput(f"--out {out}: {parent} is not a directory")


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success move its contents into ``out``.

    If ``out`` does not exist it appears in one rename; if it exists, each file is replaced atomically (files of
    earlier runs that this run does not produce are kept). On an exception nothing reaches ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)         # mkdtemp makes it private (0700); a published result should not be
    try:
        yield staging
        try:
            os.rename(staging, out)     # atomic when out is absent (or an empty directory)
        except OSError:
            _merge_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_into(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for entry in source.iterdir():
        dest = target / entry.name
        if entry.is_dir() and dest.is_dir():
            _merge_into(entry, dest)
        else:
            os.replace(entry, dest)
