"""PLACEHOLDER — being written."""
import dataclasses
from nashpref.solvers.base import Solver, SolverConfig, register


@dataclasses.dataclass
class Config(SolverConfig):
    pass


@register
class Placeholder(Solver):
    name = "nash-md"
    Config = Config

    def step(self, game, log_pi, t):
        raise NotImplementedError
