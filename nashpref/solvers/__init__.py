"""Solvers, registered by name. Importing this package registers every built-in solver."""

from nashpref.solvers.base import REGISTRY, Solver, SolverConfig, register
from nashpref.solvers import nash_md, sppo, inpo, egpo, dno, online_ipo, iterative_dpo  # noqa: F401  (registers)

__all__ = ["REGISTRY", "Solver", "SolverConfig", "register", "get_solver"]


def get_solver(name: str) -> type[Solver]:
    if name not in REGISTRY:
        raise KeyError(f"unknown solver {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
