"""The exact tabular world: the game and its duality gap, exact equilibria, game files, exact dynamics, the tabular
policy and oracle, and the result files of `nashpref equilibrium` / `nashpref solve`."""
