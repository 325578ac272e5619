#!/usr/bin/env python
"""Try one race setting for one solver on seeds that the race does not report (the way RACE_SETTINGS was chosen).

    python scripts/race_sweep.py --method comal --seeds 3 4 --out /tmp/sweep/comal-a \\
        --setting '{"lr": 5e-4, "adam_beta1": 0.0, "options": {"tau": 0.05, "period": 8}}'

It runs ``nashpref bench llm --preset full`` for that method and those seeds with the setting in place of the
solver's RACE_SETTINGS entry (keys: lr, lr_decay, adam_beta1, options), reusing OUT/setup when it is there (copy
bench/llm/setup to skip the SFT), and prints per seed the gap the solver targets (the report's column), the final
τ gap, the iterates' mixture's τ gap and the τ gap per iteration. bench/llm-tuning/sweep.log holds the sweep that
chose the shipped settings.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def parse_setting(method: str, text: str):
    """The RaceSetting ``text`` describes, checked as the train command checks its options (BadInput otherwise)."""
    from nashpref.benchmarks.llm.race import RaceSetting
    from nashpref.errors import BadInput
    from nashpref.lm.config import TrainConfig
    from nashpref.solvers import REGISTRY

    if method not in REGISTRY:
        raise BadInput(f"--method {method!r}: unknown solver; choose one of: {', '.join(REGISTRY)}")
    try:
        setting = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"--setting: not JSON ({error})") from None
    keys = {"lr", "lr_decay", "adam_beta1", "options"}
    if not isinstance(setting, dict) or not set(setting) <= keys:
        raise BadInput(f"--setting: a JSON object with keys among {', '.join(sorted(keys))}, got {text}")
    options = setting.pop("options", {})
    fields = {f.name for f in dataclasses.fields(REGISTRY[method].Config)}
    if not isinstance(options, dict) or not set(options) <= fields:
        raise BadInput(f"--setting: options of {method} are among {', '.join(sorted(fields))}, got {options}")
    REGISTRY[method].Config(**options).validate(method)
    TrainConfig(policy="-", preference="-", prompts="-", solver=method, out=Path("-"), **setting).validate()
    return RaceSetting(**setting, options=tuple(options.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--setting", default="{}", help="JSON: lr, lr_decay, adam_beta1, options")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from nashpref.benchmarks.llm import race
    from nashpref.benchmarks.llm.config import LLMBenchConfig
    from nashpref.benchmarks.llm.race_report import mixture_gap, stored_class_game, target_gaps
    from nashpref.cli.train import quiet_library_progress
    from nashpref.errors import BadInput, one_line
    from nashpref.lm.startup import import_libraries

    try:
        race.RACE_SETTINGS[args.method] = parse_setting(args.method, args.setting)
    except BadInput as error:
        sys.exit(print(one_line(error), file=sys.stderr) or 2)
    import_libraries()
    quiet_library_progress()
    race.run_race(LLMBenchConfig(preset="full", out=args.out, methods=(args.method,), seeds=tuple(args.seeds),
                                 progress=False))
    results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
    game = stored_class_game(results["class_game"], results["tau"])
    target = target_gaps(results, args.method, game)
    for seed, gap in zip(args.seeds, target["gaps"]):
        rows = results["runs"][args.method][str(seed)]
        print(f"{args.method} seed {seed} {args.setting}: target ({target['game']}, {target['iterate']}) {gap:.3f} "
              f"({target['reference'] / gap:.1f}×); final τ gap {rows[-1]['class_gap']:.3f}, mixture "
              f"{mixture_gap(game, rows):.3f}; per iteration " + " ".join(f"{r['class_gap']:.2f}" for r in rows),
              flush=True)


if __name__ == "__main__":
    main()
