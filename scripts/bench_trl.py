#!/usr/bin/env python
"""Side by side with TRL: ``nashpref train`` against TRL's online DPO and Nash-MD on the same tiny model, prompts
and oracle (the code is ``nashpref.benchmarks.trl``; ``--help`` lists the sub-commands).

    bash scripts/setup_trl_venvs.sh                                   # .venv-trl, .venv-trl-nashmd (once)
    .venv-lm/bin/python scripts/bench_trl.py                          # everything; writes bench/trl/
"""

from nashpref.benchmarks.trl.cli import main

if __name__ == "__main__":
    main()
