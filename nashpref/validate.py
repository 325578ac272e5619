"""Checks of what the user hands in, run before any work: each failure is one BadInput / MissingResource line
naming the file or option and the rule broken (see ``nashpref.errors``).

Files are read and decoded here rather than by the library that will parse them later, so that an undecodable,
empty or garbled file is reported as such (with the line), not as a library's log line or traceback. Sizes are
checked against the memory the machine has, with the estimate in the message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nashpref.errors import BadInput, MissingResource

MEMORY_SHARE = 0.8          # refuse work whose estimate exceeds this share of the memory available now


# ---- text files ------------------------------------------------------------------------------------------------
def read_text(path: str | Path, what: str) -> str:
    """The file's text, as UTF-8; BadInput when it is not UTF-8 or holds nothing but whitespace."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingResource(f"{path}: {what} file does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a {what} file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BadInput(f"{path}: {what} file is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})") from None
    if not text.strip():
        raise BadInput(f"{path}: {what} file is empty")
    return text


def check_json_file(path: str | Path, what: str, lines: bool) -> None:
    """A JSON (``lines=False``) or JSON-lines file that decodes and parses; the first bad line is named."""
    text = read_text(path, what)
    if not lines:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}: {what} file is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}: line {number} is not a JSON object ({exc.msg}); a {what} file holds one "
                               "JSON object per line") from None


# ---- models ------------------------------------------------------------------------------------------------------
def check_model_dir(path: str | Path, what: str = "model", tokenizer: bool = True) -> None:
    """A local transformers model directory: config.json, weights, and (``tokenizer``) tokenizer files."""
    path = Path(path)
    if not path.is_dir():
        raise MissingResource(f"{path}: {what} directory does not exist")
    if not (path / "config.json").is_file():
        raise BadInput(f"{path}: not a transformers {what} directory (no config.json)")
    try:
        json.loads(read_text(path / "config.json", "model config"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path / 'config.json'}: not valid JSON ({exc.msg})") from None
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in path.glob(pattern)]
    if not weights:
        raise BadInput(f"{path}: {what} directory has no weights (*.safetensors or *.bin)")
    if tokenizer and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                                  "tokenizer.model", "vocab.json")):
        raise BadInput(f"{path}: {what} directory has no tokenizer (tokenizer.json or tokenizer_config.json)")


def check_prompt_lengths(prompts: list, lengths: list[int], room: int, context: int) -> None:
    """Every prompt plus ``room`` new tokens must fit the model's ``context`` positions."""
    for prompt, length in zip(prompts, lengths):
        if length + room > context:
            text = prompt if isinstance(prompt, str) else " ".join(str(m.get("content", "")) for m in prompt)
            shown = text[:40] + ("…" if len(text) > 40 else "")
            raise BadInput(f"prompt {shown!r} is {length} tokens; with --max-new-tokens {room} that exceeds the "
                           f"model's context of {context} positions")


# ---- memory ------------------------------------------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable; else physical pages); None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1024 or unit == "PB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} PB"


def check_memory(what: str, nbytes: float, available: int | None = None) -> None:
    """BadInput when ``what`` would need more than MEMORY_SHARE of the available memory (stated in the message)."""
    available = available_memory() if available is None else available
    if available is not None and nbytes > MEMORY_SHARE * available:
        raise BadInput(f"{what} would need about {size_text(nbytes)} of memory; {size_text(available)} is "
                       "available")


# ---- the output directory -------------------------------------------------------------------------------------
def check_writable(out: str | Path, option: str = "--out") -> None:
    """BadInput unless ``out`` (or, when it does not exist yet, its nearest existing parent) is a directory this
    process may create files in. Creates nothing."""
    out = Path(out)
    existing = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise BadInput(f"{option} {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{option} {out}: {existing} is not writable")
