#!/usr/bin/env python
"""Nash-MD's mixture: the vLLM two-stack engine vs the transformers two-cache decoder (the code is
``nashpref.benchmarks.llm.vllm_mixture``).

    bash scripts/setup_trl_venvs.sh python3 nashmd       # once: TRL's GeometricMixtureWrapper, .venv-trl-nashmd
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
    from nashpref.benchmarks.llm.setup import SIZES as ALL_SIZES
    from nashpref.benchmarks.llm.vllm_mixture import K, SIZES, run

    root = Path(__file__).resolve().parent.parent

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/vllm-mixture"))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(ALL_SIZES))
    parser.add_argument("--sequences", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--trl-python", type=Path, default=root / ".venv-trl-nashmd" / "bin" / "python",
                        help="python of the TRL venv (scripts/setup_trl_venvs.sh); TRL is skipped if it is absent")
    parser.add_argument("--trl-sizes", nargs="+", default=list(SIZES), choices=list(ALL_SIZES),
                        help="sizes TRL runs on (without its KV cache it is slow on large models)")
    parser.add_argument("--no-compiled", action="store_true", help="skip the torch.compile'd vLLM engine")
    args = parser.parse_args()
    if any(s < K or s % K for s in args.sequences) or args.repeats < 1 or args.max_new_tokens < 1:
        print(f"error: --sequences must be multiples of {K}; --repeats and --max-new-tokens must be >= 1",
              file=sys.stderr)
        sys.exit(2)
    command = " ".join(["python scripts/bench_vllm_mixture.py"] + sys.argv[1:])
    trl = str(args.trl_python) if args.trl_python.exists() else None
    path = run(args.out, command, args.sizes, args.sequences, args.repeats, args.max_new_tokens, trl,
               args.trl_sizes, not args.no_compiled)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
