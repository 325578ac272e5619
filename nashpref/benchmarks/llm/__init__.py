"""``nashpref bench llm``: the solvers on a tiny language model under a ground-truth intransitive oracle (run.py), its
world (setup.py), options (config.py) and report (report.py)."""
