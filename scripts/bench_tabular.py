#!/usr/bin/env python
"""Tabular benchmarks: writes bench/tabular.md, bench/tabular.json and bench/*.png (the code is
``nashpref.benchmarks.tabular.suite``; ``--help`` lists the parts and options).

    python scripts/bench_tabular.py            # everything (6–8 min on a busy 2-core machine)
    python scripts/bench_tabular.py --quick    # a small run into bench/quick/
"""

import os

# BLAS / OpenMP pools are sized when numpy and torch load: single-threaded unless the caller sets these. Tabular
# problems are small, and on a busy machine idle pool threads cost milliseconds per op to wake up.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")    # keep torch.profiler's start/stop chatter off stderr

from nashpref.benchmarks.tabular.suite import main  # noqa: E402

if __name__ == "__main__":
    main()
