"""Plots of the theory experiments (matplotlib's object API on the Agg canvas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nashpref.plots import MARKERS


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def rounds_plot(path: Path, curves: dict[str, list[dict]], what: str, pairs_per_round: int,
                labels: dict[str, str]) -> None:
    """Mean and 95% band over seeds of the score per round, one line per strategy (log y)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for k, (name, rows) in enumerate(curves.items()):
        x = np.arange(len(rows)) * pairs_per_round
        mean = np.array([r["mean"] for r in rows])
        half = np.nan_to_num(np.array([r["ci95"] for r in rows]))
        ax.plot(x, mean, marker=MARKERS[k], label=labels.get(name, name))
        ax.fill_between(x, np.clip(mean - half, mean * 1e-3, None), mean + half, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("comparisons collected")
    ax.set_ylabel(what)
    ax.set_title("online iterative RLHF: mean and 95% interval over seeds")
    ax.legend()
    _save(fig, path)


def paired_plot(path: Path, differences: dict[str, np.ndarray]) -> None:
    """Per-seed J(π) − J(π_mle), sorted, one line per pessimistic policy; zero marked."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for k, (name, d) in enumerate(differences.items()):
        ax.plot(np.sort(d), marker=MARKERS[k], linestyle="-", label=f"{name} (mean {d.mean():+.3f})")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("seed (sorted)")
    ax.set_ylabel("true value minus the greedy MLE policy's")
    ax.set_title("pessimism on narrow offline data")
    ax.legend()
    _save(fig, path)


def recovery_plot(path: Path, sizes: list[int], curves: dict[str, dict]) -> None:
    """RMSE of the MLE against n on log-log axes, with the n^(−1/2) reference through the first point."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    n = np.array(sizes, dtype=float)
    for k, (name, c) in enumerate(curves.items()):
        ax.plot(n, c["rmse"], marker=MARKERS[k], label=f"{name} (slope {c['slope']:.2f})")
        ax.plot(n, c["rmse"][0] * np.sqrt(n[0] / n), linestyle=":", color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("comparisons n")
    ax.set_ylabel("RMSE of the MLE")
    ax.set_title("parameter recovery (dotted: n^-1/2)")
    ax.legend()
    _save(fig, path)
