"""The language-model benchmark's world: a tiny Llama made offline, SFT'd on a styled corpus, and its prompts.

``build_setup(out, size, seed)`` writes

* ``out/policy`` — the reference μ: ``make_tiny_model``'s language model (pre-trained on the tiny grammar), then a
  short SFT on a corpus whose responses come in three styles (warm / cold / plain, the styles that the
  ``rule:raters`` oracle ranks cyclically) in unequal shares, so μ is well formed, varied, and far from the
  Nash equilibrium of the cyclic game;
* ``out/prompts-train.jsonl`` and ``out/prompts-heldout.jsonl`` — prompts of the grammar, disjoint;
* ``out/setup.json`` — what was built, and μ's measured style shares, well-formed and on-topic rates.

Everything is a function of the size and the seed. The directory is written under a temporary name and renamed
into place, so a killed build leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nashpref.io import staging_directory
from nashpref.lm.tiny import COLD, NEUTRAL, NOUNS, PROMPTS, VERBS, WARM, TinySizes

STYLE_SHARES = {"warm": 0.6, "cold": 0.25, "plain": 0.15}     # μ leans warm: its best response is "plain"
OFF_TOPIC_SHARE = 0.2         # responses about another noun, so that the quality term has something to teach
SETUP_VERSION = 1


@dataclass(frozen=True)
class BenchSize:
    """One size of the language-model benchmark: the model and the default budget of a run."""

    model: TinySizes
    pretrain_steps: int
    sft_steps: int
    train_prompts: int
    heldout_prompts: int
    iterations: int
    samples: int
    max_new_tokens: int
    eval_samples: int
    lr: float


SIZES: dict[str, BenchSize] = {
    # 0.3–7 s per iteration (by method) on a 2-core CPU with the vLLM CPU engine.
    "tiny": BenchSize(TinySizes(), pretrain_steps=120, sft_steps=150, train_prompts=48, heldout_prompts=16,
                      iterations=20, samples=4, max_new_tokens=32, eval_samples=16, lr=1e-3),
    # For a GPU: a wider and deeper model, more prompts and samples.
    "small": BenchSize(TinySizes(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768, vocab=1024),
                       pretrain_steps=300, sft_steps=400, train_prompts=256, heldout_prompts=64, iterations=40,
                       samples=8, max_new_tokens=48, eval_samples=32, lr=3e-4),
    "base": BenchSize(TinySizes(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536, vocab=2048),
                      pretrain_steps=600, sft_steps=800, train_prompts=1024, heldout_prompts=128, iterations=60,
                      samples=8, max_new_tokens=64, eval_samples=32, lr=1e-4),
}

_STYLE_ADJECTIVES = {"warm": WARM, "cold": COLD, "plain": NEUTRAL}


def styled_response(noun: str, style: str, rng: random.Random) -> str:
    """One or two grammar sentences about ``noun`` in ``style``: the first adjective of each sentence comes from
    the style's word list and the others from it or the neutral words, so the style rule reads ``style``."""
    pool = _STYLE_ADJECTIVES[style] + NEUTRAL
    sentences = []
    for _ in range(rng.choice((1, 1, 2))):
        lead = rng.choice(_STYLE_ADJECTIVES[style])
        if rng.random() < 0.5:
            sentences.append(f"the {lead} {noun} is {rng.choice(pool)} and {rng.choice(pool)}.")
        else:
            sentences.append(f"the {lead} {noun} {rng.choice(VERBS)} a {rng.choice(pool)} {rng.choice(NOUNS)}.")
    return " ".join(sentences)


def random_prompt(rng: random.Random) -> str:
    noun, adjective = rng.choice(NOUNS), rng.choice(WARM + COLD + NEUTRAL)
    return rng.choice(PROMPTS).format(adj=adjective, noun=noun)


def sft_corpus(count: int, rng: random.Random, shares: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """(prompt, response) pairs: styles in ``shares`` (default STYLE_SHARES), OFF_TOPIC_SHARE of them about
    another noun."""
    styles, weights = zip(*(shares or STYLE_SHARES).items())
    pairs = []
    for _ in range(count):
        prompt = random_prompt(rng)
        noun = next(n for n in reversed(prompt.replace("?", "").split()) if n in NOUNS)
        if rng.random() < OFF_TOPIC_SHARE:
            noun = rng.choice([n for n in NOUNS if n != noun])
        pairs.append((prompt, styled_response(noun, rng.choices(styles, weights)[0], rng)))
    return pairs


def prompt_sets(train: int, heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Disjoint training and held-out prompts (distinct strings)."""
    rng = random.Random(seed + 7)
    distinct: list[str] = []
    seen = set()
    limit = len(PROMPTS) * len(NOUNS) * len(WARM + COLD + NEUTRAL)
    if train + heldout > limit:
        raise ValueError(f"the grammar has {limit} distinct prompts; asked for {train + heldout}")
    while len(distinct) < train + heldout:
        prompt = random_prompt(rng)
        if prompt not in seen:
            seen.add(prompt)
            distinct.append(prompt)
    return distinct[:train], distinct[train:]


def describe_responses(prompts: list[str], responses: list[list[str]]) -> dict:
    """Style shares, well-formed and on-topic rates, and the share of distinct responses per prompt."""
    from nashpref.preferences.rule import prompt_noun, style, well_formed, words

    flat = [(p, r) for p, rows in zip(prompts, responses) for r in rows]
    styles = [style(r) for _, r in flat]
    return {"styles": {s: styles.count(s) / len(flat) for s in ("warm", "cold", "plain")},
            "well_formed": sum(well_formed(r) for _, r in flat) / len(flat),
            "on_topic": sum(prompt_noun(p) in words(r) for p, r in flat) / len(flat),
            "distinct": sum(len(set(rows)) / len(rows) for rows in responses) / len(responses)}


def setup_matches(out: Path, size: str, seed: int, shares: dict | None = None, sft_steps: int | None = None) -> bool:
    """True when ``out`` holds a finished setup of this size, seed, version, style shares and SFT steps."""
    try:
        built = json.loads((out / "setup.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (built.get("size"), built.get("seed"), built.get("version"), built.get("style_shares_in_sft"),
            built.get("sft_steps")) == (size, seed, SETUP_VERSION, shares or STYLE_SHARES,
                                        sft_steps or SIZES[size].sft_steps)


def build_setup(out: str | Path, size: str = "tiny", seed: int = 0, sft_dialogues: int = 2000,
                shares: dict[str, float] | None = None, sft_steps: int | None = None) -> Path:
    """Write the setup directory (see the module docstring); returns ``out``. Reuses a finished one.
    ``shares`` (style → share of the SFT corpus) and ``sft_steps`` override STYLE_SHARES and the size's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig
    from nashpref.lm.tiny import _train_policy, make_tiny_model

    out = Path(out)
    if setup_matches(out, size, seed, shares, sft_steps):
        return out
    spec = SIZES[size]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(out)
    try:
        base = make_tiny_model(staging / "base", seed=seed, sizes=spec.model, policy_steps=spec.pretrain_steps,
                               reward_steps=0)
        tokenizer = AutoTokenizer.from_pretrained(base["policy"])
        model = AutoModelForCausalLM.from_pretrained(base["policy"], dtype=torch.float32)
        rng = random.Random(seed + 3)
        pairs = sft_corpus(sft_dialogues, rng, shares)
        sft_steps = sft_steps or spec.sft_steps
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                               tokenize=False) for p, r in pairs]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 3)
            _train_policy(model, tokenizer, texts, sft_steps, rng)
        model.save_pretrained(staging / "policy", safe_serialization=True)
        tokenizer.save_pretrained(staging / "policy")
        shutil.rmtree(staging / "base")

        train, heldout = prompt_sets(spec.train_prompts, spec.heldout_prompts, seed)
        for name, rows in (("prompts-train.jsonl", train), ("prompts-heldout.jsonl", heldout)):
            (staging / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows), encoding="utf-8")

        policy = LMPolicy(model, tokenizer, heldout, sampling=SamplingConfig(max_new_tokens=spec.max_new_tokens))
        drawn = policy.sample(torch.arange(len(heldout)), spec.eval_samples, torch.Generator().manual_seed(seed))
        reference = describe_responses(heldout, drawn.texts)
        (staging / "setup.json").write_text(json.dumps(
            {"version": SETUP_VERSION, "size": size, "seed": seed, "model": asdict(spec.model),
             "sft_steps": sft_steps, "sft_dialogues": sft_dialogues, "style_shares_in_sft": shares or STYLE_SHARES,
             "off_topic_share_in_sft": OFF_TOPIC_SHARE, "train_prompts": len(train), "heldout_prompts": len(heldout),
             "reference_on_heldout": reference}, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
