"""Solvers, registered by name. Importing this package registers every built-in solver.

To add a solver: write ``nashpref/solvers/<name>.py`` (a ``Solver`` subclass decorated with ``@register``), add
its module to the import line below, and give it a test twin ``tests/test_<name>.py`` (see the README).
"""

from nashpref.solvers.base import REGISTRY, Solver, SolverConfig, option_field, register
from nashpref.solvers import nash_md, sppo, inpo, egpo, dno, online_ipo, iterative_dpo  # noqa: F401,E402  (registers)
from nashpref.solvers import comal, mpo, spo  # noqa: F401,E402  (registers)
from nashpref.solvers import onpo, nash_mp  # noqa: F401,E402  (registers)

__all__ = ["REGISTRY", "Solver", "SolverConfig", "register", "option_field", "get_solver", "UNREGULARISED"]

# The solvers of the unregularised game: they ignore τ (or regularise towards a centre they move, COMAL's and MPO's),
# so their gap is the τ = 0 one; ONPO takes τ when it is given
UNREGULARISED = ("sppo", "dno", "spo", "mpo", "comal")


def get_solver(name: str) -> type[Solver]:
    if name not in REGISTRY:
        raise KeyError(f"unknown solver {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
