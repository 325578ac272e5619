"""Prompts for language-model self-play, read through `datasets`.

A prompt is either plain text or a chat: a list of {"role", "content"} messages. Local JSONL / JSON / Parquet /
CSV files and hub dataset ids are accepted; a missing column is a one-line BadInput naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from nashpref.errors import BadInput, MissingResource
from nashpref.validate import check_json_file, read_text

Prompt = Union[str, list[dict]]
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompts(spec: str, column: str = "prompt", split: str = "train", limit: int | None = None) -> list[Prompt]:
    """Prompts from a local file or a hub dataset id. ``column`` may hold strings or chat message lists; a
    ``messages`` column is used when ``column`` is absent and it exists."""
    ds = load_table(spec, split, "prompts")
    if column not in ds.column_names:
        if column == "prompt" and "messages" in ds.column_names:
            column = "messages"
        else:
            raise BadInput(f"{spec}: no column {column!r} (columns: {', '.join(ds.column_names)}); "
                           "pass --prompt-column")
    rows = ds[column] if limit is None else ds[column][:limit]
    prompts = [_check_prompt(row, spec, i, column) for i, row in enumerate(rows)]
    if not prompts:
        raise BadInput(f"{spec}: no prompts in column {column!r}")
    return prompts


def load_table(spec: str, split: str = "train", what: str = "prompts"):
    """A `datasets.Dataset` from a local JSONL / JSON / Parquet / CSV file or a hub dataset id; every failure is
    one BadInput line naming ``spec`` (``what`` says what was being read)."""
    import datasets  # optional dependency: only LM training needs it

    path = Path(spec)
    suffix = path.suffix.lower()
    try:
        if suffix in LOCAL_FORMATS:
            if not path.is_file():
                raise MissingResource(f"{spec}: {what} file does not exist")
            if suffix in (".jsonl", ".json"):       # decoding and syntax errors named here, with the line
                check_json_file(path, what, lines=suffix == ".jsonl")
            elif suffix == ".csv":
                read_text(path, what)
            return datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(path), split="train")
        if path.exists():
            raise BadInput(f"{spec}: unsupported {what} file type {suffix or '(none)'}; "
                           f"use one of {', '.join(LOCAL_FORMATS)}")
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not _looks_like_hub_id(spec):
            raise MissingResource(f"{spec}: no such {what} file")
        return datasets.load_dataset(spec, split=split)
    except (BadInput, MissingResource):
        raise
    except Exception as exc:  # datasets raises many types; the user needs one line naming the source
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{spec}: could not read {what}: {first_line}") from None


def _looks_like_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/"))


def _check_prompt(row, spec: str, i: int, column: str) -> Prompt:
    if isinstance(row, str):
        if not row.strip():
            raise BadInput(f"{spec}: row {i}: empty prompt in column {column!r}")
        return row
    if isinstance(row, list) and row and all(isinstance(m, dict) and "role" in m and "content" in m for m in row):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in row]
    raise BadInput(f"{spec}: row {i}: column {column!r} must hold text or a list of chat messages "
                   "with 'role' and 'content'")
