#!/usr/bin/env python
"""Rewrite tests/data/behaviour.json: the behaviour tests/test_behaviour.py holds the code to (see tests/behaviour.py).

    python scripts/record_behaviour.py            # builds the tiny model in a temporary directory (~2 min)

It runs with portable CPU kernels (tests/behaviour.py, PORTABLE_KERNELS): set here, before torch starts, so the
recording is the same on every x86-64 CPU. tests/test_behaviour.py runs this script with ``--out`` to a scratch file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from behaviour import PORTABLE_KERNELS, TINY_BUILD, record, solvers  # noqa: E402  (imports torch: kernels set below)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "behaviour.json")
    parser.add_argument("--solvers", nargs="+", default=None, help="default: every registered solver")
    args = parser.parse_args()
    unknown = sorted(set(args.solvers or []) - set(solvers()))
    if unknown:
        print(f"error: --solvers: unknown solver {unknown[0]!r} (choose from: {', '.join(solvers())})",
              file=sys.stderr)
        sys.exit(2)
    if any(os.environ.get(key) != value for key, value in PORTABLE_KERNELS.items()):
        # torch read its kernel choice at import: start again with the portable settings in place
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PORTABLE_KERNELS})

    import torch

    from nashpref.lm.tiny import make_tiny_model

    torch.set_num_threads(1)          # the tiny model's build and the runs depend on it
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        make_tiny_model(tiny, **TINY_BUILD)
        result = record(tiny, Path(tmp), args.solvers)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
