"""nashpref: Nash learning from human feedback, verified against exact equilibria."""

__version__ = "0.1.0"
