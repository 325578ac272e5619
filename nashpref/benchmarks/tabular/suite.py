"""The tabular benchmark suite (``scripts/bench_tabular.py``): writes bench/tabular.md, bench/tabular.json and
bench/*.png.

(a) exact equilibrium: ``solve_equilibrium`` against cvxpy + CLARABEL on the convex formulation (τ > 0), and the
    τ = 0 linear program against nashpy (linear program, Lemke-Howson, support and vertex enumeration) and a cvxpy
    LP; seconds and the exact duality gap each method reaches;
(b) the EGPO exact-tabular table (algorithms.md §6.4): the final gap of every registered solver on the 10 random
    N=10 games of ``games/egpo-random.toml``, at the iteration budgets of §6.4;
(c) batched throughput: one exact solver step on C=1024 contexts × N=64 actions against one bare ``torch.bmm``;
(d) sampled training: gap against the number of preference queries, every solver and iterative DPO, on three
    games.

Timings are medians over repeats taken side by side (round robin, in one process): the machine is shared and
noisy, so only numbers measured together are compared. Each part records the command, date and load it ran under;
running a subset of parts (``--parts``) keeps the other parts' results from the existing JSON.

    python scripts/bench_tabular.py            # everything (6–8 min on a busy 2-core machine)
    python scripts/bench_tabular.py --quick    # a small run into bench/quick/
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from nashpref.benchmarks.tabular.common import PARTS, SCHEMA, machine, stamp
from nashpref.benchmarks.tabular.egpo_table import part_b, report_b
from nashpref.benchmarks.tabular.equilibria import part_a, report_a
from nashpref.benchmarks.tabular.race import compact_json
from nashpref.benchmarks.tabular.sampled import part_d, report_d
from nashpref.benchmarks.tabular.throughput import part_c, report_c


RUNNERS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}
REPORTERS = {"a": report_a, "b": report_b, "c": report_c, "d": report_d}
TITLES = {"a": "(a) Exact equilibrium: ours vs cvxpy (CLARABEL) and nashpy",
          "b": "(b) The EGPO exact-tabular table (algorithms.md §6.4)",
          "c": "(c) Batched throughput: one exact step vs one torch.bmm",
          "d": "(d) Sampled mode: gap vs preference queries"}


def write_report(out: Path, results: dict) -> None:
    lines = ["# Tabular benchmarks", "",
             "Written by `scripts/bench_tabular.py` (each part below names the command, date and machine load it "
             "ran under). Timings are medians over repeats taken side by side in one process; the machine is "
             "shared, so compare numbers only within a table.", ""]
    meta = results.get("machine", {})
    lines += ["Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items()), ""]
    for part in PARTS:
        if part not in results:
            continue
        info = results[part]
        lines += [f"## {TITLES[part]}", "",
                  f"`{info['stamp']['command']}` — {info['stamp']['date']}, load average "
                  f"{info['stamp']['load_before'][0]:.1f} before / {info['stamp']['load_after'][0]:.1f} after, "
                  f"{info['stamp']['seconds']:.0f} s, {info['stamp']['torch_threads']} torch thread(s).", "",
                  REPORTERS[part](info["result"]), ""]
    (out / "tabular.md").write_text("\n".join(lines))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and budgets (a smoke run, ~1 min)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--out", default=None, help="output folder (default: bench, or bench/quick with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (BLAS: OMP_NUM_THREADS)")
    parser.add_argument("--repeats", type=int, default=None, help="override every part's repeat count")
    parser.add_argument("--enumeration-n", type=int, default=8,
                        help="N for nashpy support/vertex enumeration (at N=10 they took 0.5–3 min each here)")
    parser.add_argument("--enumeration-timeout", type=float, default=400.0, help="seconds per enumeration")
    parser.add_argument("--nashpy-timeout", type=float, default=30.0, help="seconds for one Lemke-Howson run")
    parser.add_argument("--itdpo-rounds", type=int, default=200,
                        help="(b) rounds of iterative DPO's exact dynamics (a BT fit per round; its default)")
    parser.add_argument("--slow-step", type=float, default=20.0,
                        help="(c) a solver whose first step at C=1024 takes longer is measured at C=64")
    parser.add_argument("--sampled-iterations", type=int, default=1000, help="(d) iterations per run")
    parser.add_argument("--sampled-seeds", type=int, default=1, help="(d) seeds per solver and game")
    parser.add_argument("--samples", type=int, default=8, help="(d) K, samples per context per iteration")
    parser.add_argument("--labels", choices=("exact", "bernoulli"), default="exact", help="(d) preference labels")
    parser.add_argument("--sampled-lr", type=float, default=0.01, help="(d) Adam learning rate")
    args = parser.parse_args(argv)
    args.out = args.out or ("bench/quick" if args.quick else "bench")
    if args.quick:
        args.nashpy_timeout, args.slow_step = min(args.nashpy_timeout, 5.0), min(args.slow_step, 5.0)
        args.enumeration_n = min(args.enumeration_n, 6)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tabular.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results = {key: value for key, value in results.items()
               if key not in PARTS or value.get("stamp", {}).get("schema") == SCHEMA}
    results["machine"] = machine()
    for part in PARTS:
        if part not in args.parts:
            continue
        info = stamp(args)
        start = time.perf_counter()
        result = RUNNERS[part](args)
        info |= {"seconds": time.perf_counter() - start, "load_after": list(os.getloadavg())}
        results[part] = {"stamp": info, "result": result}
        path.write_text(compact_json(results) + "\n")
        write_report(out, results)
    print(f"wrote {out / 'tabular.md'} and {path}")


if __name__ == "__main__":
    main()
