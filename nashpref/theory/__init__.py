"""The theory around the game, in tabular contextual-bandit form where every claim is checked exactly.

Contexts x (C of them) with N actions each and feature vectors φ(x, a) ∈ R^d; a reference policy μ and a
strength τ. Modules: ``bandit`` (the world and its exact values), ``mle`` (preference models fitted from pairs),
``enhancer`` (the uncertainty-seeking policy within a KL budget), ``online`` (online iterative RLHF with
exploration), ``pessimism`` (offline lower-confidence-bound policies), ``logodds`` (the log-odds payoff),
``maxmin`` (several objectives and user groups).
"""
