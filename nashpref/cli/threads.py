"""How many torch threads a tabular command uses (kept apart from `solve` so `equilibrium` need not import it)."""

from __future__ import annotations

import os

import torch

SMALL_GAME = 1 << 20            # preference entries (C·N²) up to which one torch thread is fastest


def threads_for(game) -> None:
    """One torch thread for small games: their tensors are tiny, and a thread pool then costs more than it
    saves (measured: EGPO on egpo-random, 2791 steps, 0.24 s with one thread vs 4.3 s with two on a busy 2-core
    machine). An explicit OMP_NUM_THREADS is left alone."""
    if game.P.numel() <= SMALL_GAME and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
