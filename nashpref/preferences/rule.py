"""Programmatic text oracles (``rule:NAME``) for tests and benchmarks; their probabilities follow by hand.

Words are lower-cased with surrounding punctuation stripped; the word lists are those of the tiny model's
world (nashpref/lm/tiny.py), so the rules give the tiny policy a real game to play.

* ``length`` — Bradley–Terry on word counts: σ((|a| − |b|) / 2).
* ``warm`` — Bradley–Terry on the tiny reward model's target: σ(4 (s(a) − s(b))), s = (#warm − #cold) / #words.
* ``cyclic`` — intransitive. A response's style is "warm" (#warm > #cold), "cold" (#cold > #warm) or "plain".
  Three raters rank the styles cyclically (warm > cold > plain, cold > plain > warm, plain > warm > cold); P is
  the raters' mean vote (½ for a tie). The majority is a Condorcet cycle: P(warm ≻ cold) = P(cold ≻ plain) =
  P(plain ≻ warm) = 2/3 — rock-paper-scissors, P = ½ + A/6.
* ``raters`` — intransitive, with a quality term; the ground truth of ``nashpref bench llm``. The same three
  raters score a response u_r(y) = (2 − rank_r(style)) + λ·q(x, y) and vote σ(β (u_r(a) − u_r(b))); P is the
  mean vote. Quality q ∈ {0, ½, 1}: ½ for mentioning the prompt's noun, ½ for being well formed (one or two
  sentences of the tiny grammar). With λ = ½ < 1 style decides across styles, so the majority over styles stays
  a cycle (P(warm ≻ cold) = (2σ(β) + σ(−2β))/3 ≈ 0.636 at β = 3 and equal quality), and quality decides within a style.
  P depends on a response only through (style, q), so the best response to any policy is a top-quality response
  of one of the three styles: a pool holding one per style gives the exact best response.
* ``cycle`` — intransitive and sharp, a pure function of the style: P(warm ≻ cold) = P(cold ≻ plain) =
  P(plain ≻ warm) = 0.95 (CYCLE_MATRIX, ½ within a style); the known-answer game of ``nashpref bench llm
  --preset quick|full``, whose LM game reduces exactly to this 3 × 3 matrix game on the styles.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.lm.tiny import COLD, NEUTRAL, NOUNS, VERBS, WARM, reward_score
from nashpref.preferences.base import Prompt, TextOracle, check_lengths, prompt_text, register

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


CYCLE_WIN = 0.95
# CYCLE_MATRIX[i][j] = P(style i ≻ style j), styles in STYLES order (warm, cold, plain)
CYCLE_MATRIX = ((0.5, CYCLE_WIN, 1 - CYCLE_WIN), (1 - CYCLE_WIN, 0.5, CYCLE_WIN), (CYCLE_WIN, 1 - CYCLE_WIN, 0.5))


@functools.lru_cache(maxsize=1 << 16)
def _style(text: str) -> str:
    return style(text)


def cycle_rule(prompt: Prompt, a: str, b: str) -> float:
    return CYCLE_MATRIX[STYLES.index(_style(a))][STYLES.index(_style(b))]


RATER_SHARPNESS = 3.0          # β
QUALITY_WEIGHT = 0.5           # λ: below 1, so that no quality difference outweighs a step in a rater's ranking
_ADJECTIVES = frozenset(WARM + COLD + NEUTRAL)
_NOUNS = frozenset(NOUNS)
_VERBS = frozenset(tuple(v.split()) for v in VERBS)


def well_formed_sentence(tokens: list[str]) -> bool:
    """"the ADJ NOUN is ADJ and ADJ" or "the ADJ NOUN VERB a ADJ NOUN" (VERB may be two words)."""
    if len(tokens) < 6 or tokens[0] != "the" or tokens[1] not in _ADJECTIVES or tokens[2] not in _NOUNS:
        return False
    rest = tokens[3:]
    if len(rest) == 4 and rest[0] == "is" and rest[2] == "and":
        return rest[1] in _ADJECTIVES and rest[3] in _ADJECTIVES
    for verb in _VERBS:
        n = len(verb)
        if tuple(rest[:n]) == verb and len(rest) == n + 3 and rest[n] == "a":
            return rest[n + 1] in _ADJECTIVES and rest[n + 2] in _NOUNS
    return False


def well_formed(text: str) -> bool:
    """One or two sentences of the tiny grammar, each ending with a full stop, nothing else."""
    stripped = text.strip()
    if not stripped.endswith("."):
        return False
    sentences = [part.split() for part in stripped[:-1].lower().split(".")]
    return 1 <= len(sentences) <= 2 and all(well_formed_sentence(tokens) for tokens in sentences)


def prompt_noun(prompt: Prompt) -> str | None:
    """The (last) noun of the tiny grammar that the prompt mentions."""
    found = [w for w in words(prompt_text(prompt)) if w in _NOUNS]
    return found[-1] if found else None


def quality(prompt: Prompt, text: str) -> float:
    """½·[mentions the prompt's noun] + ½·[well formed]."""
    noun = prompt_noun(prompt)
    on_topic = noun is not None and noun in words(text)
    return 0.5 * on_topic + 0.5 * well_formed(text)


def rater_utilities(response_style: str, response_quality: float) -> list[float]:
    """u_r(y) of the three raters for a response of this style and quality."""
    return [2 - ranking.index(response_style) + QUALITY_WEIGHT * response_quality for ranking in RATER_RANKINGS]


def raters_probability(style_a: str, quality_a: float, style_b: str, quality_b: float) -> float:
    """P(a ≻ b) of the ``raters`` rule from the two responses' (style, quality)."""
    ua, ub = rater_utilities(style_a, quality_a), rater_utilities(style_b, quality_b)
    return sum(_sigmoid(RATER_SHARPNESS * (x - y)) for x, y in zip(ua, ub)) / len(ua)


@functools.lru_cache(maxsize=1 << 16)
def _features(prompt: str, text: str) -> tuple[str, float]:
    return style(text), quality(prompt, text)


def raters_features(prompt: Prompt, text: str) -> tuple[str, float]:
    """(style, quality): all that the ``raters`` rule reads of a response (cached: benchmarks ask often)."""
    return _features(prompt_text(prompt), text)


def raters_rule(prompt: Prompt, a: str, b: str) -> float:
    return raters_probability(*raters_features(prompt, a), *raters_features(prompt, b))


RULES: dict[str, Callable[[Prompt, str, str], float]] = {
    "length": length_rule, "warm": warm_rule, "cyclic": cyclic_rule, "raters": raters_rule,
    "cycle": cycle_rule}


@register
class RuleOracle(TextOracle):
    """A rule applied pair by pair."""

    prefix = "rule"

    def __init__(self, name: str, rule: Callable[[Prompt, str, str], float]):
        self.name, self.rule = name, rule

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "RuleOracle":
        return rule_oracle(arg)

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        check_lengths(f"rule:{self.name}", prompts, a, b)
        return torch.tensor([self.rule(p, x, y) for p, x, y in zip(prompts, a, b)], dtype=torch.float32)


def rule_oracle(name: str) -> RuleOracle:
    if name not in RULES:
        raise BadInput(f"rule:{name}: unknown rule; available: {', '.join(sorted(RULES))}")
    return RuleOracle(name, RULES[name])
