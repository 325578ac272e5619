"""Benchmarks: the tabular solver race and the language-model race against iterative DPO."""
