"""Prompts for language-model self-play, read through `datasets`.

A prompt is either plain text or a chat: a list of {"role", "content"} messages. Local JSONL / JSON / Parquet /
CSV files, directories written by ``Dataset.save_to_disk`` and hub dataset ids (with a split and a column) are
accepted; a missing column or split is a one-line BadInput naming it. Under torchrun every rank checks only its
share of the rows (``datasets.distributed.split_dataset_by_node``) and the shares are gathered in rank order,
so every rank ends with the same prompt list, in the file's order.
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
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    prompts = _checked_shares(ds, spec, column)
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
        if path.is_dir():
            return _saved_dataset(path, split, what)
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


def _saved_dataset(path: Path, split: str, what: str):
    """A dataset directory written by ``save_to_disk`` (a Dataset, or a DatasetDict and one of its splits)."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise MissingResource(f"{path}: not a dataset directory (written by save_to_disk) nor a {what} file") \
            from None
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise BadInput(f"{path}: no split {split!r} (splits: {', '.join(saved)}); pass --prompt-split")
        return saved[split]
    return saved


def _checked_shares(ds, spec: str, column: str) -> list[Prompt]:
    """Every row of ``column``, checked by the rank whose node share holds it and gathered in rank order; a bad
    row raises the same BadInput on every rank (so none is left waiting)."""
    from nashpref.lm.backend import distributed as pg

    ranks, index = pg.world_size(), pg.rank()
    offset = 0
    if ranks > 1:
        from datasets.distributed import split_dataset_by_node

        offset = pg.shard_bounds(len(ds), ranks, index)[0]     # split_dataset_by_node's contiguous share
        ds = split_dataset_by_node(ds, rank=index, world_size=ranks)
    try:
        mine, error = [_check_prompt(row, spec, offset + i, column) for i, row in enumerate(ds[column])], None
    except BadInput as exc:
        mine, error = [], str(exc)
    shares = pg.gather_rows([(mine, error)])
    errors = [error for _, error in shares if error is not None]
    if errors:
        raise BadInput(errors[0])
    return [prompt for share, _ in shares for prompt in share]


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
