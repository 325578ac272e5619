"""Policies implementing the one protocol of ``nashpref.solvers.base.Policy``."""

from nashpref.policies.tabular import TabularPolicy

__all__ = ["TabularPolicy"]
