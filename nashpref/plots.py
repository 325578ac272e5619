"""Convergence plots (matplotlib's object API on the Agg canvas, so no global backend is touched)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

FLOOR = 1e-16   # gaps at or below machine precision (or exactly 0) are drawn here on the log scale


def _clip(values: list) -> list[float]:
    return [FLOOR if v is None or v <= FLOOR else v for v in values]


def _queries_per_iteration(rows: list[dict]) -> float | None:
    """The constant number of preference queries per iteration, if the rows have one."""
    if not rows or any("queries" not in r for r in rows):
        return None
    ratios = {r["queries"] / r["iteration"] for r in rows if r["iteration"] > 0}
    return ratios.pop() if len(ratios) == 1 else None


MARKERS = "osD^vPX*<>h"    # 11 markers against 10 colours: unique pairs up to 110 curves


def convergence_plot(path: Path, runs: dict[str, list[dict]], *, title: str, tau: float,
                     reference: dict[str, float] | None = None, x: str = "iteration") -> None:
    """Gap vs ``x`` ("iteration" or "queries") on log-log axes, one line per run (metrics rows with keys
    ``iteration``, ``gap``, ``gap_unregularized`` and optionally ``gap_last``, ``queries``).

    For τ > 0 a second panel shows the unregularised gap, which is what SPPO / DNO converge in. A run with
    ``gap_last`` (average-iterate solvers) also gets its last iterate, dashed. ``reference`` gives the gaps of
    the exact equilibrium π*_τ, drawn as a dotted horizontal line: the level a solver of the τ-game reaches.
    Sparse markers tell apart runs whose curves coincide (e.g. SPPO and DNO share their exact dynamics).
    """
    panels = [("gap", f"duality gap at τ = {tau:g}")]
    if tau > 0:
        panels.append(("gap_unregularized", "unregularised duality gap (τ = 0)"))
    fig = Figure(figsize=(6.4 * len(panels), 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, ylabel) in zip(axes, panels):
        for i, (label, rows) in enumerate(runs.items()):
            colour, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
            xs = [r[x] for r in rows]
            averaged = any("gap_last" in r for r in rows)
            # past ten runs the colours repeat: a dash-dot line and another marker keep the curves apart
            ax.plot(xs, _clip([r.get(key) for r in rows]), color=colour, lw=1.6, marker=marker, markersize=4,
                    ls="-" if i < 10 else "-.", markevery=(0.02 * i, 0.15),
                    label=f"{label} (average iterate)" if averaged else label)
            if averaged and key == "gap":
                ax.plot(xs, _clip([r["gap_last"] for r in rows]), color=colour, lw=1.0, ls="--",
                        label=f"{label} (last iterate)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("preference queries" if x == "queries" else "iteration")
        ax.set_ylabel(ylabel + ", worst context")
        ax.grid(True, which="major", alpha=0.3)
        if x == "iteration" and len(runs) == 1:
            per = _queries_per_iteration(next(iter(runs.values())))
            if per:
                top = ax.secondary_xaxis("top", functions=(lambda i, p=per: i * p, lambda q, p=per: q / p))
                top.set_xlabel("preference queries")
    handles, labels = axes[0].get_legend_handles_labels()
    if reference is not None:
        handles.append(Line2D([], [], color="black", ls=":", lw=1.2))
        labels.append(_reference(axes, panels, reference, "exact π*_τ" if tau > 0 else "exact π*"))
    fig.legend(handles, labels, loc="outside lower center", ncols=min(2 * len(panels), len(labels)),
               fontsize="small")
    fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _reference(axes, panels, reference: dict[str, float], name: str) -> str:
    """Dotted lines at the equilibrium's gaps; returns their legend label. A level far below every curve (an
    exact zero no run gets near) is only named, so the curves keep the vertical space."""
    parts = []
    for ax, (key, _) in zip(axes, panels):
        if key not in reference:
            continue
        level = reference[key]
        low = min((y for line in ax.get_lines() for y in line.get_ydata()), default=FLOOR)
        text = f"{'gap' if key == 'gap' else 'unregularised gap'} {max(level, 0.0):.1e}"
        if max(level, FLOOR) < low / 1e3:
            text += " (below the axis)"
        else:
            ax.axhline(max(level, FLOOR), color="black", ls=":", lw=1.2)
        parts.append(text)
    return f"{name}: {', '.join(parts)}"
