"""Game files: read and write the TOML games of ``games/`` (the format is documented in games/README.md).

A file holds one game: a name, a description, a default τ, optional action labels, and either one
``[preference]`` (+ ``reference``) or a list of ``[[context]]`` tables. Preferences and references may be given
literally or by a generator (``random``, ``bradley-terry``, ``bt-mixture``, ``linear-reward``,
``random-logits``); a ``[[context]]`` with ``repeat = R`` stands for R contexts whose generator seeds advance by
one per repetition. Every problem is a one-line :class:`GameError` naming the file, the context and the rule.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from nashpref import checks
from nashpref.errors import GameError, NashprefError
from nashpref.validate import check_memory
from nashpref.core.game import PreferenceGame, validate_matrix, validate_reference, validate_tau, as_tensor

DEFAULT_TAU = 0.1
GAME_KEYS = {"name", "description", "tau", "actions", "reference", "preference", "context", "payoff"}
PAYOFFS = ("probability", "log-odds")
GAME_COPIES = 4                 # float64 C×N×N tensors alive at once while a game is built and solved
CONTEXT_KEYS = {"reference", "preference", "repeat"}
PREFERENCE_KEYS = {
    "matrix": {"matrix"},
    "random": {"n", "seed"},
    "bradley-terry": {"rewards", "scale"},
    "bt-mixture": {"rewards", "weights", "scale"},
    "linear-reward": {"rewards"},
}


def games_dir() -> Path:
    """Where game NAMEs are looked up: ``$NASHPREF_GAMES`` if set, else the repository's ``games/``."""
    override = os.environ.get("NASHPREF_GAMES")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "games"


@dataclass(frozen=True)
class GameInfo:
    name: str
    path: Path
    description: str
    num_contexts: int
    num_actions: int
    tau: float


def list_games(broken: list[str] | None = None) -> list[GameInfo]:
    """Every game file in games_dir(), sorted by file name. With a ``broken`` list, a file that does not load is
    skipped and its one-line error appended there; without it, the error is raised."""
    infos = []
    for path in sorted(games_dir().glob("*.toml")):
        try:
            game = load_game(str(path))
        except NashprefError as err:
            if broken is None:
                raise
            broken.append(" ".join(str(err).split()))
            continue
        infos.append(GameInfo(name=path.stem, path=path, description=game.description,
                              num_contexts=game.num_contexts, num_actions=game.num_actions, tau=game.tau))
    return infos


def resolve_game_path(spec: str) -> Path:
    """A path (anything ending in .toml, containing a separator, or naming an existing file) or a game NAME."""
    path = Path(spec)
    if spec.endswith(".toml") or os.sep in spec or "/" in spec or path.is_file():
        if not path.is_file():
            raise GameError(f"{spec}: game file not found")
        return path
    candidate = games_dir() / f"{spec}.toml"
    if not candidate.is_file():
        names = ", ".join(sorted(p.stem for p in games_dir().glob("*.toml"))) or "none"
        raise GameError(f"unknown game {spec!r}: not a file, and not a name in {games_dir()} (available: {names})")
    return candidate


def load_game(spec: str, tau: float | None = None) -> PreferenceGame:
    """Load a game from a .toml path or a NAME in games_dir(); ``tau`` overrides the file's default."""
    path = resolve_game_path(str(spec))
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise GameError(f"{where}: not valid TOML: {str(err).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GameError(f"{where}: cannot read the file: {err}") from None
    return build_game(data, where, default_name=path.stem, tau=tau)


def build_game(data: dict, where: str, default_name: str = "game", tau: float | None = None) -> PreferenceGame:
    """Build a game from parsed TOML; ``where`` prefixes every error message."""
    reject_unknown_keys(data, GAME_KEYS, where, "game")
    name = string(data.get("name", default_name), where, "name")
    description = string(data.get("description", ""), where, "description")
    file_tau = data.get("tau", DEFAULT_TAU)
    validate_tau(file_tau, where)
    if tau is not None:
        validate_tau(tau, f"{where} (tau override)")
    tau = float(file_tau if tau is None else tau)

    if ("preference" in data) == ("context" in data):
        raise GameError(f"{where}: give exactly one of a [preference] table or a list of [[context]] tables")
    if "preference" in data:
        tables = [{"preference": data["preference"]}]
    else:
        tables = data["context"]
        if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
            raise GameError(f"{where}: 'context' must be a non-empty list of [[context]] tables")
    default_reference = data.get("reference", "uniform")

    matrices, references = [], []
    for k, table in enumerate(tables):
        label = where if "preference" in data else f"{where}: context {k + 1} of {len(tables)}"
        if "context" in data:
            reject_unknown_keys(table, CONTEXT_KEYS, label, "[[context]]")
        if "preference" not in table:
            raise GameError(f"{label}: missing the 'preference' table")
        repeat = integer(table.get("repeat", 1), label, "repeat", minimum=1)
        for r in range(repeat):
            P = preference_matrix(table["preference"], label, offset=r)
            if r == 0:
                game_memory(f"{label}: repeat = {repeat}", repeat + len(matrices), P.shape[0])
            mu = reference_policy(table.get("reference", default_reference), P.shape[0], label, offset=r)
            if matrices and P.shape != matrices[0].shape:
                raise GameError(f"{label}: has {P.shape[0]} actions but the first context has "
                                f"{matrices[0].shape[0]} (every context of a game needs the same number)")
            matrices.append(P)
            references.append(mu)

    n = matrices[0].shape[0]
    actions = data.get("actions")
    if actions is not None:
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise GameError(f"{where}: 'actions' must be a list of strings")
        if len(actions) != n:
            raise GameError(f"{where}: {len(actions)} action labels for {n} actions")
        if len(set(actions)) != n:
            raise GameError(f"{where}: action labels must be distinct")
    payoff = data.get("payoff", "probability")
    if payoff not in PAYOFFS:
        raise GameError(f"{where}: 'payoff' must be one of {', '.join(PAYOFFS)}, got {payoff!r}")
    game = PreferenceGame.create(np.stack(matrices), np.stack(references), tau, name=name, actions=actions,
                                 description=description, where=where)
    if payoff == "log-odds":    # the probability game with the log-odds game's equilibrium (gaps scaled by c)
        from nashpref.theory.logodds import equivalent_game

        try:
            game = equivalent_game(game)[0]
        except GameError as err:
            raise GameError(f"{where}: {err}") from None
    return game


def game_memory(what: str, contexts: int, n: int) -> None:
    """Refuse a game whose float64 C×N×N tensors (P, its transpose and the solvers' work copies: about
    GAME_COPIES of them) would not fit in memory, with the estimate."""
    check_memory(f"{what} ({contexts} context(s) of {n}×{n})", GAME_COPIES * 8.0 * contexts * n * n)


# ---- preferences ------------------------------------------------------------------------------------------------
def preference_matrix(spec, where: str, offset: int = 0) -> np.ndarray:
    """The N×N matrix a [preference] table describes (``offset`` advances a random seed, for ``repeat``)."""
    if not isinstance(spec, dict):
        raise GameError(f"{where}: 'preference' must be a table with a 'kind'")
    kind = spec.get("kind")
    if kind not in PREFERENCE_KEYS:
        raise GameError(f"{where}: unknown preference kind {kind!r} (known: {', '.join(PREFERENCE_KEYS)})")
    reject_unknown_keys(spec, PREFERENCE_KEYS[kind] | {"kind"}, where, f"a {kind} preference")
    where_kind = f"{where}: {kind} preference"
    if kind == "matrix":
        P = matrix(require(spec, "matrix", where_kind), where_kind, "matrix")
    elif kind == "random":
        n = integer(require(spec, "n", where_kind), where_kind, "n", minimum=1)
        seed = integer(require(spec, "seed", where_kind), where_kind, "seed", minimum=0)
        game_memory(f"{where_kind}: n = {n}", 1, n)
        P = random_preference(n, seed + offset)
    elif kind == "bradley-terry":
        rewards = vector(require(spec, "rewards", where_kind), where_kind, "rewards", finite=True)
        scale = number(spec.get("scale", 1.0), where_kind, "scale")
        P = bradley_terry(rewards[None], np.ones(1), scale)
    elif kind == "bt-mixture":
        rewards = matrix(require(spec, "rewards", where_kind), where_kind, "rewards", finite=True)
        weights = vector(require(spec, "weights", where_kind), where_kind, "weights", finite=True)
        scale = number(spec.get("scale", 1.0), where_kind, "scale")
        if len(weights) != rewards.shape[0]:
            raise GameError(f"{where_kind}: {len(weights)} weights for {rewards.shape[0]} raters (rows of rewards)")
        if (weights < 0).any() or weights.sum() <= 0:
            raise GameError(f"{where_kind}: weights must be >= 0 and not all zero")
        P = bradley_terry(rewards, weights / weights.sum(), scale)
    else:  # linear-reward
        rewards = vector(require(spec, "rewards", where_kind), where_kind, "rewards", finite=True)
        if (rewards < 0).any() or (rewards > 1).any():
            raise GameError(f"{where_kind}: rewards must lie in [0, 1] (so that ½ + (r_i − r_j)/2 is a probability)")
        P = 0.5 + (rewards[:, None] - rewards[None, :]) / 2
    validate_matrix(as_tensor(P), where)
    return P


def random_preference(n: int, seed: int) -> np.ndarray:
    """The EGPO random game: U = default_rng(seed).random((n, n)); P[i,j] = U[i,j] for i > j, P[j,i] = 1 − P[i,j]."""
    lower = np.tril(np.random.default_rng(seed).random((n, n)), k=-1)
    return lower + np.triu(1.0 - lower.T, k=1) + 0.5 * np.eye(n)


def bradley_terry(rewards: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    """P[i,j] = Σ_k w_k σ(scale·(r_k,i − r_k,j)) for K raters with rewards (K, N)."""
    # σ(x) = ½(1 + tanh(x/2)) is odd around ½, so P + Pᵀ = 1 holds to rounding even for huge margins; margins
    # that overflow become ±inf (σ = 0 or 1) or NaN (inf − inf), which the matrix validation then names
    with np.errstate(over="ignore", invalid="ignore"):
        margins = scale * (rewards[:, :, None] - rewards[:, None, :])
        return np.einsum("k,kij->ij", weights, 0.5 * (1.0 + np.tanh(margins / 2)))


# ---- references -------------------------------------------------------------------------------------------------
def reference_policy(spec, n: int, where: str, offset: int = 0) -> np.ndarray:
    """μ from "uniform", a list of N probabilities, or { random-logits = { seed, scale } }."""
    if spec == "uniform":
        mu = np.full(n, 1.0 / n)
    elif isinstance(spec, list):
        mu = vector(spec, where, "reference")
        if len(mu) != n:
            raise GameError(f"{where}: reference has {len(mu)} probabilities for {n} actions")
    elif isinstance(spec, dict) and set(spec) == {"random-logits"} and isinstance(spec["random-logits"], dict):
        table = spec["random-logits"]
        reject_unknown_keys(table, {"seed", "scale"}, where, "random-logits")
        seed = integer(require(table, "seed", f"{where}: random-logits"), where, "random-logits.seed", minimum=0)
        scale = number(table.get("scale", 1.0), where, "random-logits.scale")
        with np.errstate(over="ignore", invalid="ignore"):   # a huge scale gives NaN, which validation names
            logits = scale * np.random.default_rng(seed + offset).standard_normal(n)
            mu = np.exp(logits - logits.max())
            mu /= mu.sum()
    else:
        raise GameError(f"{where}: reference must be \"uniform\", a list of {n} probabilities, "
                        "or { random-logits = { seed = S, scale = X } }")
    validate_reference(as_tensor(mu), where)
    return mu


# ---- writing ----------------------------------------------------------------------------------------------------
def save_game(game: PreferenceGame, path) -> Path:
    """Write ``game`` as a matrix-kind TOML file that load_game reads back exactly (floats via repr)."""
    path = Path(path)
    lines = [f"name = {toml_string(game.name)}", f"description = {toml_string(game.description)}",
             f"tau = {float(game.tau)!r}"]
    if game.actions is not None:
        lines.append("actions = [" + ", ".join(toml_string(a) for a in game.actions) + "]")
    P, mu = game.P.tolist(), game.mu.tolist()
    for c in range(game.num_contexts):
        lines.append("")
        if game.num_contexts > 1:
            lines += ["[[context]]", f"reference = {toml_floats(mu[c])}", "[context.preference]"]
        else:
            lines += [f"reference = {toml_floats(mu[c])}", "", "[preference]"]
        lines += ['kind = "matrix"', "matrix = [", *(f"  {toml_floats(row)}," for row in P[c]), "]"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def toml_floats(values) -> str:
    return "[" + ", ".join(toml_float(float(v)) for v in values) + "]"


def toml_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def toml_string(text: str) -> str:
    # JSON string escapes (\" \\ \n \uXXXX …) are all valid in a TOML basic string.
    return json.dumps(str(text), ensure_ascii=False)


# ---- typed access -----------------------------------------------------------------------------------------------
def reject_unknown_keys(table: dict, allowed: set[str], where: str, what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise GameError(f"{where}: unknown key {unknown[0]!r} in {what} (allowed: {', '.join(sorted(allowed))})")


def require(table: dict, key: str, where: str):
    if key not in table:
        raise GameError(f"{where}: missing key '{key}'")
    return table[key]


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def number(x, where: str, key: str) -> float:
    if not is_number(x) or not math.isfinite(x):
        raise GameError(f"{where}: '{key}' must be a finite number, got {x!r}")
    return float(x)


def integer(x, where: str, key: str, minimum: int) -> int:
    return checks.integer(x, f"{where}: '{key}'", minimum, error=GameError)


def string(x, where: str, key: str) -> str:
    if not isinstance(x, str):
        raise GameError(f"{where}: '{key}' must be a string, got {x!r}")
    return x


def vector(x, where: str, key: str, finite: bool = False) -> np.ndarray:
    """A non-empty list of numbers (NaN and ±inf pass unless ``finite``; the matrix/reference rules name them)."""
    if not isinstance(x, list) or not x or not all(is_number(v) for v in x):
        raise GameError(f"{where}: '{key}' must be a non-empty list of numbers")
    if finite and not all(math.isfinite(v) for v in x):
        raise GameError(f"{where}: '{key}' must contain finite numbers only")
    return np.asarray(x, dtype=np.float64)


def matrix(x, where: str, key: str, finite: bool = False) -> np.ndarray:
    """A non-empty list of equally long rows of numbers."""
    if not isinstance(x, list) or not x or not all(isinstance(row, list) and row for row in x):
        raise GameError(f"{where}: '{key}' must be a non-empty list of rows of numbers")
    if len({len(row) for row in x}) != 1:
        raise GameError(f"{where}: every row of '{key}' must have the same length")
    if not all(is_number(v) for row in x for v in row):
        raise GameError(f"{where}: '{key}' must contain numbers only")
    if finite and not all(math.isfinite(v) for row in x for v in row):
        raise GameError(f"{where}: '{key}' must contain finite numbers only")
    return np.asarray(x, dtype=np.float64)
