"""`nashpref fit-preference` on the tiny model: labels from a known rule are learnt, and the written model is the
`pairwise:` oracle's.

Truths used: the rule that made the labels (on fresh pairs the fit never saw; chance agreement is ½, and 90 of 100
by luck has probability < 1e-16); log 2, the loss of every model that ignores its input (d = 0); and the
oracle's own formula σ((s(x, a, b) − s(x, b, a))/2) recomputed by PairwiseOracle, a separate module.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest_lm import forward_tolerance, tiny_dir  # noqa: F401  (fixture)
from nashpref.cli import main
from nashpref.preferences.fit import FitPreferenceConfig, load_base, pair_logits, run_fit_preference
from nashpref.errors import NashprefError
from nashpref.io import read_jsonl
from nashpref.lm.tiny import COLD, NEUTRAL, NOUNS, PROMPTS, WARM

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads


def warmth(text: str) -> int:
    words = [w.strip(".") for w in text.split()]
    return sum(w in WARM for w in words) - sum(w in COLD for w in words)


def rule_pairs(count: int, seed: int) -> list[dict]:
    """(prompt, a, b, label) with label 1 when a has more warm-minus-cold adjectives than b (ties left out)."""
    rng = random.Random(seed)

    def response() -> str:
        noun, first, second = rng.choice(NOUNS), rng.choice(WARM + COLD + NEUTRAL), rng.choice(WARM + COLD + NEUTRAL)
        return f"the {first} {noun} is {second}."

    rows = []
    while len(rows) < count:
        a, b = response(), response()
        if warmth(a) != warmth(b):
            prompt = rng.choice(PROMPTS).format(adj=rng.choice(NEUTRAL), noun=rng.choice(NOUNS))
            rows.append({"prompt": prompt, "a": a, "b": b, "label": float(warmth(a) > warmth(b))})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fitted_model_learns_the_rule_and_is_the_pairwise_oracle(tiny_dir, tmp_path):
    from nashpref.preferences.pairwise import PairwiseOracle

    data = write_rows(tmp_path / "pairs.jsonl", rule_pairs(300, seed=0))
    out = tmp_path / "model"
    result = run_fit_preference(FitPreferenceConfig(data=str(data), base=str(tiny_dir / "policy"), out=out,
                                                    epochs=3, lr=1e-3, validation=0.2))
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows == json.loads(json.dumps(result.rows))
    # Below log 2 (every input-blind model), and well below: the average probability given to the observed
    # label is then above exp(−log 2 / 4) ≈ 0.84.
    assert rows[-1]["train_loss_after"] < math.log(2) / 4 < rows[0]["train_loss_after"]
    assert rows[-1]["validation_accuracy"] >= 0.9

    fresh = rule_pairs(100, seed=1)
    prompts, a, b = ([r[k] for r in fresh] for k in ("prompt", "a", "b"))
    label = torch.tensor([r["label"] for r in fresh])
    oracle = PairwiseOracle.from_pretrained(str(out), device="cpu")
    p = oracle.prefer_texts(prompts, a, b)
    assert ((p > 0.5) == (label > 0.5)).float().mean().item() >= 0.9
    # The oracle's probability is σ of the logit the fit maximised the likelihood of.
    with torch.no_grad():
        d = pair_logits(oracle.model, oracle.tokenizer, prompts, a, b)
    # σ(d) + σ(−d) = 1 up to float32 rounding of d's forwards (the swapped pair is another forward)
    atol = forward_tolerance(oracle.model.config, d.abs().max().item())
    torch.testing.assert_close(p + oracle.prefer_texts(prompts, b, a), torch.ones(100), rtol=0, atol=atol)
    torch.testing.assert_close(p, torch.sigmoid(d), rtol=0, atol=atol)


def test_bad_input_is_a_game_error_and_nothing_is_written(tiny_dir, tmp_path, capsys):
    good = write_rows(tmp_path / "good.jsonl", rule_pairs(4, seed=2))
    bad_label = write_rows(tmp_path / "bad-label.jsonl", [{"prompt": "p", "a": "x", "b": "y", "label": 1.5}])
    cases = {
        "missing file": (dict(data=str(tmp_path / "none.jsonl")), "does not exist"),
        "missing column": (dict(label_column="preference"), "no column 'preference'"),
        "label out of range": (dict(data=str(bad_label)), "must be a probability in [0, 1]"),
        "missing base": (dict(base=str(tmp_path / "no-model")), "does not exist"),
        "zero epochs": (dict(epochs=0), "--epochs must be an integer >= 1"),
    }
    for name, (options, message) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        settings = dict(data=str(good), base=str(tiny_dir / "policy"), out=out) | options
        with pytest.raises(NashprefError, match=message.replace("[", r"\[").replace("]", r"\]")):
            run_fit_preference(FitPreferenceConfig(**settings))
        assert not out.exists(), name
    # The command line: one error line, exit status 2.
    capsys.readouterr()
    code = main(["fit-preference", "--data", str(bad_label), "--base", str(tiny_dir / "policy"),
                 "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "[0, 1]" in err[0]
    assert not (tmp_path / "cli").exists()


def test_the_starting_model_gets_a_seeded_one_logit_head(tiny_dir, tmp_path):
    """Same seed, same head (the run is reproducible); the head is new (the base is a causal LM)."""
    config = FitPreferenceConfig(data="unused", base=str(tiny_dir / "policy"), out=tmp_path / "x", seed=3)
    first, _ = load_base(config)
    second, _ = load_base(config)
    other, _ = load_base(FitPreferenceConfig(data="unused", base=str(tiny_dir / "policy"), out=tmp_path / "x",
                                             seed=4))
    assert first.config.num_labels == 1
    assert torch.equal(first.score.weight, second.score.weight)
    assert not torch.equal(first.score.weight, other.score.weight)
