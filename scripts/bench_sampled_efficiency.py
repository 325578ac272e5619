"""Queries to a duality gap of 0.03 for every solver's default sampled run on random intransitive games (N ≤ 10).

    python scripts/bench_sampled_efficiency.py --out bench/sampled-efficiency

Writes OUT/results.json, OUT/README.md (table and command) and OUT/queries_to_gap.png (log-log, medians).
The code is nashpref/benchmarks/tabular/efficiency.py.
"""

from __future__ import annotations

import sys

from nashpref.benchmarks.tabular.efficiency import parser, run_bench
from nashpref.sampled import single_thread

if __name__ == "__main__":
    with single_thread():
        sys.exit(run_bench(parser().parse_args()))
