"""Programmatic text oracles (``rule:NAME``) for tests and benchmarks; their probabilities follow by hand.

Words are lower-cased with surrounding punctuation stripped; the word lists are those of the tiny model's
world (nashpref/tiny.py), so the rules give the tiny policy a real game to play.

* ``length`` — Bradley–Terry on word counts: σ((|a| − |b|) / 2).
* ``warm`` — Bradley–Terry on the tiny reward model's target: σ(4 (s(a) − s(b))), s = (#warm − #cold) / #words.
* ``cyclic`` — intransitive. A response's style is "warm" (#warm > #cold), "cold" (#cold > #warm) or "plain".
  Three raters rank the styles cyclically (warm > cold > plain, cold > plain > warm, plain > warm > cold); P is
  the raters' mean vote (½ for a tie). The majority is a Condorcet cycle: P(warm ≻ cold) = P(cold ≻ plain) =
  P(plain ≻ warm) = 2/3 — rock-paper-scissors, P = ½ + A/6.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from nashpref.game import GameError
from nashpref.preferences.text import Prompt, TextOracle, check_lengths
from nashpref.tiny import COLD, WARM, reward_score

STYLES = ("warm", "cold", "plain")
RATER_RANKINGS = (("warm", "cold", "plain"), ("cold", "plain", "warm"), ("plain", "warm", "cold"))


def words(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'()") for w in text.lower().split() if w.strip(".,!?;:\"'()")]


def style(text: str) -> str:
    tokens = words(text)
    warm, cold = sum(w in WARM for w in tokens), sum(w in COLD for w in tokens)
    return "warm" if warm > cold else "cold" if cold > warm else "plain"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def length_rule(prompt: Prompt, a: str, b: str) -> float:
    return _sigmoid((len(words(a)) - len(words(b))) / 2)


def warm_rule(prompt: Prompt, a: str, b: str) -> float:
    return _sigmoid(4.0 * (reward_score(a) - reward_score(b)))


def cyclic_rule(prompt: Prompt, a: str, b: str) -> float:
    sa, sb = style(a), style(b)
    votes = []
    for ranking in RATER_RANKINGS:
        ra, rb = ranking.index(sa), ranking.index(sb)       # 0 is best
        votes.append(1.0 if ra < rb else 0.0 if ra > rb else 0.5)
    return sum(votes) / len(votes)


RULES: dict[str, Callable[[Prompt, str, str], float]] = {
    "length": length_rule, "warm": warm_rule, "cyclic": cyclic_rule}


class RuleOracle(TextOracle):
    """A rule applied pair by pair."""

    def __init__(self, name: str, rule: Callable[[Prompt, str, str], float]):
        self.name, self.rule = name, rule

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        check_lengths(f"rule:{self.name}", prompts, a, b)
        return torch.tensor([self.rule(p, x, y) for p, x, y in zip(prompts, a, b)], dtype=torch.float32)


def rule_oracle(name: str) -> RuleOracle:
    if name not in RULES:
        raise GameError(f"rule:{name}: unknown rule; available: {', '.join(sorted(RULES))}")
    return RuleOracle(name, RULES[name])
