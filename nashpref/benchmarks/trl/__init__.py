"""The side-by-side comparison with TRL (``scripts/bench_trl.py``): every module imports only the standard library
at top level, so the orchestrator starts fast and tests need no TRL."""
