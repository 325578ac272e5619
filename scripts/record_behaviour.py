#!/usr/bin/env python
"""Rewrite tests/data/behaviour.json: the behaviour tests/test_behaviour.py holds the code to (see tests/behaviour.py).

    python scripts/record_behaviour.py            # builds the tiny model in a temporary directory (~1 min)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from behaviour import TINY_BUILD, record  # noqa: E402


def main() -> None:
    import torch

    from nashpref.lm.tiny import make_tiny_model

    torch.set_num_threads(1)          # as tests/conftest.py: the tiny model's build depends on it

    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        make_tiny_model(tiny, **TINY_BUILD)
        result = record(tiny, Path(tmp))
    target = ROOT / "tests" / "data" / "behaviour.json"
    target.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
