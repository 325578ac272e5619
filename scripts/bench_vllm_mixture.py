#!/usr/bin/env python
"""Nash-MD's mixture: the vLLM two-stack engine vs the transformers two-cache decoder (the code is
``nashpref.benchmarks.llm.vllm_mixture``).

    python scripts/bench_vllm_mixture.py --out bench/vllm-mixture
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")          # both samplers on one thread each: a fair, quiet race
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from nashpref.benchmarks.llm.vllm_mixture import K, SIZES, run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/vllm-mixture"))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--sequences", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if any(s < K or s % K for s in args.sequences) or args.repeats < 1 or args.max_new_tokens < 1:
        print(f"error: --sequences must be multiples of {K}; --repeats and --max-new-tokens must be >= 1",
              file=sys.stderr)
        sys.exit(2)
    command = " ".join(["python scripts/bench_vllm_mixture.py"] + sys.argv[1:])
    path = run(args.out, command, args.sizes, args.sequences, args.repeats, args.max_new_tokens)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
