"""Plain-text tables of the tabular commands (no colours, no terminal width assumed)."""

from __future__ import annotations

from nashpref.core.game import PreferenceGame


def describe(game: PreferenceGame) -> str:
    contexts = f"{game.num_contexts} context{'s' if game.num_contexts > 1 else ''}"
    return f"τ = {game.tau:g}, {contexts} × {game.num_actions} actions"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def gap_text(gap: float) -> str:
    """Rounding can make an exact gap of 0 come out at −1e-16; show that as 0, but any real negative as is."""
    return f"{0.0 if -1e-12 < gap < 0 else gap:.3e}"


def summary_table(rows: list[dict]) -> str:
    queries = any("queries" in r for r in rows)
    header = ["solver", "iterate", "iterations"] + (["queries"] if queries else []) + \
             ["gap", "gap (tau=0)", "seconds"]
    body = [[r["solver"], r["iterate"], r["iterations"]] + ([r.get("queries", "")] if queries else []) +
            [gap_text(r["gap"]), gap_text(r["gap_unregularized"]), f"{r['seconds']:.3f}"] for r in rows]
    return table(header, body)


def policy_table(game: PreferenceGame, policies, gaps, limit: int = 10, width: int = 8) -> str:
    def fmt(p) -> str:
        shown = ", ".join(f"{x:.6f}" for x in p[:width].tolist())
        return f"({shown}{', …' if len(p) > width else ''})"

    rows = [[c, fmt(policies[c]), gap_text(gaps[c].item())] for c in range(min(game.num_contexts, limit))]
    text = table(["context", "policy" + (f" over {', '.join(game.actions)}" if game.actions and
                                         game.num_actions <= width else ""), "gap"], rows)
    if game.num_contexts > limit:
        text += f"\n… {game.num_contexts - limit} more contexts in equilibrium.json"
    return text
