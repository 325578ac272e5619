"""Tabular benchmarks: ``nashpref bench tabular`` (race.py, report.py) and the suite behind
``scripts/bench_tabular.py`` (suite.py and one module per part: equilibria, egpo_table, throughput, sampled)."""
