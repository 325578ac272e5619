"""Side by side with TRL (issue 5, item 3): ``nashpref train`` (Nash-MD, iterative DPO) against TRL's online DPO
(trl 1.16, ``trl.experimental.online_dpo``) and TRL's Nash-MD (trl 1.13, the newest release that ships it) on the
same tiny model, prompts and ground-truth oracle: time per iteration and final win-rates.

    bash scripts/setup_trl_venvs.sh                                   # .venv-trl, .venv-trl-nashmd (once)
    .venv-lm/bin/python scripts/bench_trl.py                          # everything; writes bench/trl/

Sub-commands (the first argument; ``run`` when it is left out):

* ``run``: every contender as a subprocess in its own venv, alternating round robin over seeds; then one
  attempt at TRL's vLLM colocate mode, then ``check-mixture``, then ``evaluate`` in .venv-lm.
* ``trl-worker``: one TRL training run (inside .venv-trl or .venv-trl-nashmd), with per-step times written by a
  TrainerCallback.
* ``check-mixture``: Nash-MD's opponent sampler, TRL's and ours: the error of its draws against the exact
  geometric mixture, and its cost as responses grow (inside .venv-trl-nashmd).
* ``evaluate``: win-rates of every final policy under the oracle on the held-out prompts, then results.json,
  the plot and README.md.

Every module's top level imports only the standard library, so tests can import its pure helpers without TRL
(CI does not install it) and the orchestrator starts fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nashpref.benchmarks.trl.evaluate import evaluate
from nashpref.benchmarks.trl.mixture import check_mixture
from nashpref.benchmarks.trl.orchestrate import OneLineParser, run
from nashpref.benchmarks.trl.plan import METHODS, ROOT
from nashpref.benchmarks.trl.worker import trl_worker


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command")

    def shared(p: argparse.ArgumentParser) -> None:
        p.add_argument("--setup", type=Path, default=Path("bench/llm/setup"),
                       help="setup directory (policy/, prompts-*.jsonl); `run` builds the default one, the same "
                            "that `nashpref bench llm` uses, when it is missing")
        p.add_argument("--preference", default=None,
                       help="oracle spec (default: setup.json's 'preference', else rule:raters)")
        p.add_argument("--max-new-tokens", type=int, default=32)

    r = sub.add_parser("run", help="the whole benchmark (default)")
    shared(r)
    r.add_argument("--size", default="tiny", choices=("tiny", "small", "base"),
                   help="model size of the setup that `run` builds when --setup is missing (nashpref bench llm's sizes)")
    r.add_argument("--iterations", type=int, default=10)
    r.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    r.add_argument("--prompts-per-iteration", type=int, default=8)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--out", type=Path, default=ROOT / "bench" / "trl")
    r.add_argument("--methods", default=None, help=f"comma-separated subset of {', '.join(METHODS)}")
    r.add_argument("--eval-samples", type=int, default=16)
    r.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every run (1: the tiny model gains nothing from a second thread, and "
                        "two OpenMP threads on a shared 2-core machine stall badly when another process runs)")
    r.add_argument("--timeout", type=int, default=900, help="seconds per training subprocess")
    r.add_argument("--skip-colocate", action="store_true", help="do not attempt TRL's vLLM colocate mode")
    r.add_argument("--skip-mixture-check", action="store_true",
                   help="do not check / time the Nash-MD mixture samplers (check-mixture)")
    r.set_defaults(func=run)

    w = sub.add_parser("trl-worker", help="one TRL run (inside a TRL venv)")
    shared(w)
    w.add_argument("--method", choices=[m for m, s in METHODS.items() if s["side"] == "trl"], required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--iterations", type=int, default=10)
    w.add_argument("--prompts-per-iteration", type=int, default=8)
    w.add_argument("--lr", type=float, default=1e-3)
    w.add_argument("--run-dir", type=Path, required=True)
    w.add_argument("--vllm-colocate", action="store_true")
    w.set_defaults(func=trl_worker)

    c = sub.add_parser("check-mixture", help="Nash-MD mixture sampler: correctness and cost (.venv-trl-nashmd)")
    shared(c)
    c.add_argument("--result", type=Path, required=True, help="JSON file to write")
    c.set_defaults(func=check_mixture)

    e = sub.add_parser("evaluate", help="win-rates + report (in .venv-lm)")
    shared(e)
    e.add_argument("--out", type=Path, default=ROOT / "bench" / "trl")
    e.add_argument("--eval-samples", type=int, default=16)
    e.add_argument("--eval-seed", type=int, default=12345)
    e.add_argument("--total-start", type=float, default=None, help=argparse.SUPPRESS)
    e.set_defaults(func=evaluate)
    return top


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "trl-worker", "check-mixture", "evaluate", "-h", "--help"):
        argv = ["run"] + argv
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
