"""`--config FILE` and `--print-config` for every command, and the options every command takes (`--verbose`,
`--report-to`).

A config file (TOML; YAML when PyYAML is installed) holds the command's options under their field names:
``iters = 300``, nested tables for nested options (``[nash-md]`` / ``eta = 0.1``), ``-`` or ``_`` alike. Its
values are turned into command-line flags placed before the ones typed, so a typed flag overrides the file; a
key that is not an option of the command is an error naming it. ``--print-config`` prints the effective options
as a TOML file that ``--config`` reads back; the same text is saved as ``OUT/config.toml`` after a run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from nashpref.errors import BadInput, MissingResource, UsageError

GLOBAL_KEYS = {"verbose": bool, "report-to": str}
REPORT_TO = ("none", "tensorboard", "wandb")


@dataclasses.dataclass
class GlobalOptions:
    """What main() takes out of argv before tyro sees it."""

    config: Path | None = None
    print_config: bool = False
    verbose: bool = False
    report_to: str = "none"


def split_globals(argv: Sequence[str]) -> tuple[list[str], GlobalOptions]:
    """argv without --config FILE, --print-config, --verbose and --report-to X, and those options."""
    rest, options = [], GlobalOptions()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--config", "--report-to"):
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name} needs a value")
                value, i = args[i + 1], i + 1
            if name == "--config":
                options.config = Path(value)
            else:
                options.report_to = report_to(value)
        elif arg == "--print-config":
            options.print_config = True
        elif arg == "--verbose":
            options.verbose = True
        else:
            rest.append(arg)
        i += 1
    return rest, options


def report_to(value: str) -> str:
    if value not in REPORT_TO:
        raise UsageError(f"--report-to {value}: choose one of {', '.join(REPORT_TO)}")
    return value


# ---- reading a file ----------------------------------------------------------------------------------------------
def read_config(path: Path) -> dict:
    """The file's tables: TOML, or YAML for .yaml / .yml (needs PyYAML)."""
    from nashpref.validate import read_text

    text = read_text(path, "config")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MissingResource(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the config "
                                  "as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BadInput(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            import tomllib
        except ImportError:          # Python < 3.11
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a config file holds key = value pairs and tables")
    return data


def config_flags(path: Path, command: type, options: GlobalOptions) -> list[str]:
    """The file's values as flags of ``command`` (a dataclass); the global keys go into ``options``."""
    data = read_config(path)
    flags: list[str] = []
    for key, value in data.items():
        name = key.replace("_", "-")
        if name in GLOBAL_KEYS:
            if name == "verbose":
                options.verbose = options.verbose or bool(value)
            elif options.report_to == "none":
                options.report_to = report_to(str(value))
            continue
        flags += value_flags(path, command, [name], value)
    return flags


def value_flags(path: Path, cls: type, names: list[str], value: Any) -> list[str]:
    field = find_field(cls, names[-1])
    shown = ".".join(names)
    if field is None:
        raise BadInput(f"{path}: unknown key {shown!r}; `nashpref … --help` lists the options")
    kind = field_type(cls, field)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise BadInput(f"{path}: {shown!r} is a table of options ([{shown}])")
        return [flag for key, inner in value.items()
                for flag in value_flags(path, kind, names + [key.replace("_", "-")], inner)]
    flag = "--" + ".".join(names)
    if value is None:                   # YAML's `key:` with nothing after it: the option's default
        return []
    if isinstance(value, bool):
        return [flag if value else "--" + ".".join(names[:-1] + ["no-" + names[-1]])]
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    if isinstance(value, dict):
        raise BadInput(f"{path}: {shown!r} takes a value, not a table")
    return [flag, str(value)]


def find_field(cls: type, name: str):
    for field in dataclasses.fields(cls):
        if field.name.replace("_", "-") == name:
            return field
    return None


def field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls, include_extras=False)
    return hints.get(field.name, field.type)


# ---- writing the effective config --------------------------------------------------------------------------------
def to_toml(cmd: Any, extra: dict | None = None) -> str:
    """The command's options (and the ``extra`` global ones) as TOML that `--config` reads back (options left at
    None are omitted)."""
    scalars, tables = [f"{key} = {toml_value(value)}" for key, value in (extra or {}).items()], []
    for field in dataclasses.fields(cmd):
        value = getattr(cmd, field.name)
        key = field.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            body = [f"{k.replace('_', '-')} = {toml_value(v)}" for k, v in
                    ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value)) if v is not None]
            tables.append(f"\n[{key}]\n" + "\n".join(body) if body else f"\n[{key}]")
        elif value is not None:
            scalars.append(f"{key} = {toml_value(value)}")
    return "\n".join(scalars) + "\n" + "\n".join(tables) + ("\n" if tables else "")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def save_config(cmd: Any, text: str) -> None:
    """OUT/config.toml, when the command has an output directory that now exists."""
    from nashpref.io import atomic_write

    out = getattr(cmd, "out", None)
    if out is not None and Path(out).is_dir():
        atomic_write(Path(out) / "config.toml", text)


def print_config(text: str) -> None:
    sys.stdout.write(text)
