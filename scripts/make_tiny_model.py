"""Write a tiny Llama policy (DIR/policy) and a reward model (DIR/reward) that share a tokenizer trained on the spot,
and DIR/prompts.jsonl for `nashpref train`.

    python scripts/make_tiny_model.py --out DIR [--seed 0] [--sizes.hidden 64 ...]

Needs transformers and tokenizers (``pip install -e '.[lm]'``); nothing is downloaded. See nashpref/lm/tiny.py.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import tyro

from nashpref.lm.tiny import TinySizes, make_tiny_model


@dataclasses.dataclass
class Args:
    out: Path
    """Directory to write policy/ and reward/ into."""
    seed: int = 0
    """Seed of the corpus, the tokenizer, the initial weights and the training batches."""
    sizes: TinySizes = TinySizes()
    """Architecture of both models."""
    dialogues: int = 1000
    """Synthetic (prompt, response) pairs to train the tokenizer and the models on."""
    policy_steps: int = 120
    """Language-model training steps of the policy (0: random weights)."""
    reward_steps: int = 150
    """Regression steps of the reward model (0: random weights)."""


def main() -> None:
    args = tyro.cli(Args)
    start = time.perf_counter()
    paths = make_tiny_model(args.out, seed=args.seed, sizes=args.sizes, dialogues=args.dialogues,
                            policy_steps=args.policy_steps, reward_steps=args.reward_steps)
    print(f"wrote {paths['policy']}, {paths['reward']} and {paths['prompts']} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
