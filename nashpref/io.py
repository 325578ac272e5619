"""Everything nashpref writes goes through here: one atomic writer (a temporary file in the same directory,
flushed and fsynced, then renamed over the target), JSON and JSONL on top of it, directories published whole
(built in a temporary sibling, fsynced, renamed into place), and an output directory that appears only once
everything in it is complete, so bad input or a crash never leaves a half-written file or DIR."""

from __future__ import annotations

import dataclasses
import glob
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
        os.fchmod(fd, 0o666 & ~current_umask())    # mkstemp makes it 0600: results are meant to be shared
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


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def staging_directory(target: Path) -> Path:
    """A fresh temporary sibling ``.NAME.PID.XXXX.tmp`` of ``target`` with the mode a new directory gets under the
    umask (mkdtemp alone makes it 0700, and it keeps that mode once renamed into place). Siblings left by a
    process that no longer exists (kill -9 mid-write) are removed first."""
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"))
    staging.chmod(0o777 & ~current_umask())
    return staging


def remove_stale_staging(target: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` siblings of ``target`` whose process PID is gone."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = stale.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # someone else's process: alive
        return True
    return True


def publish_directory(target: Path, write: Callable[[Path], None]) -> Path:
    """Build ``target`` with ``write(staging)`` in a temporary sibling, fsync it, then rename it into place (an
    older ``target`` is removed first): a kill at any moment leaves no half-written ``target``."""
    staging = staging_directory(target)
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
    """Fail early (before any work) when DIR cannot be an output directory (not a directory, or not writable);
    creates nothing."""
    from nashpref.validate import check_writable

    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a directory")
    check_writable(out)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success move its contents into ``out``.

    If ``out`` does not exist it appears in one rename; if it exists, each file is replaced atomically (files of
    earlier runs that this run does not produce are kept). On an exception nothing reaches ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(out)
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
