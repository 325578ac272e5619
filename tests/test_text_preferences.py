"""Text preference oracles against values computed directly from the models or by hand."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from conftest_lm import PROMPTS, forward_tolerance, tiny_dir  # noqa: F401  (fixtures)
from nashpref.errors import NashprefError
from nashpref.preferences.judge import JudgeOracle, parse_verdict
from nashpref.preferences.pairwise import PairwiseOracle
from nashpref.preferences.python_hook import PythonOracle
from nashpref.preferences.reward import RewardOracle
from nashpref.preferences.rule import rule_oracle
from nashpref.preferences import load_text_oracle
from nashpref.lm.responses import responses_from_lists
from nashpref.tolerance import assert_close

import transformers

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

A = ["the warm cat is happy.", "the cold robot waits.", "a river", "the gentle star is bright and kind."]
B = ["the dark cat is grim.", "the cold robot waits.", "the tall river is small and red.", "a gray star"]
X = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def single_logits(model, tokenizer, text):
    """Logits of one unpadded text (bos already in the chat-rendered text)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0]


def test_reward_oracle_is_bradley_terry_over_direct_model_logits(tiny_dir):
    oracle = load_text_oracle(f"reward:{tiny_dir / 'reward'}", device="cpu")
    assert isinstance(oracle, RewardOracle)
    model, tok = oracle.model, oracle.tokenizer

    def r(prompt, response):
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        text = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        return single_logits(model, tok, text)[0].item()

    rewards = [(r(x, a), r(x, b)) for x, a, b in zip(X, A, B)]
    expected = [sigmoid(ra - rb) for ra, rb in rewards]
    got = oracle.prefer_texts(X, A, B)
    # batched forwards against one-at-a-time ones; σ' ≤ ¼ and two rewards: half a forward's rounding
    atol = forward_tolerance(model.config, max(abs(v) for pair in rewards for v in pair)) / 2
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=atol)
    assert got[1] == 0.5                                                     # identical responses
    torch.testing.assert_close(oracle.prefer_texts(X, B, A), 1 - got, rtol=0, atol=atol)
    assert max(abs(e - 0.5) for e in expected) > 0.05                        # not a constant oracle


def test_tiny_reward_model_learned_its_target(tiny_dir):
    """The tiny reward model ranks warm over cold responses (its regression target), as Bradley–Terry says."""
    oracle = RewardOracle.from_pretrained(str(tiny_dir / "reward"), device="cpu")
    warm = ["the warm cat is happy and kind.", "the bright dog is golden and gentle."]
    cold = ["the cold cat is grim and dark.", "the harsh dog is bitter and gray."]
    rewards = oracle.rewards([PROMPTS[0]] * 4, warm + cold)
    assert rewards[:2].min() > rewards[2:].max()


def test_prefer_reshapes_token_responses_per_context(tiny_dir):
    oracle = rule_oracle("length")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir / "policy")
    enc = [tok.encode(t, add_special_tokens=False) for t in A + B]
    a = responses_from_lists([[enc[0], enc[1]], [enc[2], enc[3]]], [X[0], X[2]], tok)
    b = responses_from_lists([[enc[4], enc[5]], [enc[6], enc[7]]], [X[0], X[2]], tok)
    got = oracle.prefer(torch.tensor([0, 2]), a, b)
    words = [[len(t.split()) for t in row] for row in (A, B)]
    expected = [[sigmoid((words[0][2 * i + j] - words[1][2 * i + j]) / 2) for j in range(2)] for i in range(2)]
    assert_close(got, torch.tensor(expected), scale=1.0, length=2)              # float32 σ of a word count


@pytest.mark.parametrize("labels", [1, 2])
def test_pairwise_oracle_is_antisymmetrised_classifier_score(tiny_dir, tmp_path, labels):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir / "policy")
    config = transformers.AutoConfig.from_pretrained(tiny_dir / "reward")
    config.num_labels = labels
    torch.manual_seed(labels)
    config.initializer_range = 0.5                      # a random classifier with clearly non-zero scores
    transformers.LlamaForSequenceClassification(config).save_pretrained(tmp_path / "pair")
    tok.save_pretrained(tmp_path / "pair")
    oracle = load_text_oracle(f"pairwise:{tmp_path / 'pair'}", device="cpu")
    assert isinstance(oracle, PairwiseOracle)

    def s(x, a, b):
        shown = f"{x if isinstance(x, str) else 'system: be brief' + chr(10) + 'user: ' + x[1]['content']}" \
                f"\n\n[Response A]\n{a}\n\n[Response B]\n{b}"
        text = tok.apply_chat_template([{"role": "user", "content": shown}], tokenize=False)
        logits = single_logits(oracle.model, tok, text)
        return logits[0].item() if labels == 1 else (logits[0] - logits[1]).item()

    scores = [(s(x, a, b), s(x, b, a)) for x, a, b in zip(X, A, B)]
    expected = [sigmoid((sab - sba) / 2) for sab, sba in scores]
    got = oracle.prefer_texts(X, A, B)
    atol = forward_tolerance(oracle.model.config, max(abs(v) for pair in scores for v in pair)) / 2
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=atol)
    torch.testing.assert_close(got + oracle.prefer_texts(X, B, A), torch.ones(4), rtol=0, atol=2 * atol)
    assert got[1] == 0.5 and (got - 0.5).abs().max() > 0.01


def test_rule_oracles_by_hand():
    cyclic = rule_oracle("cyclic")
    warm, cold, plain = "the warm cat.", "the cold cat.", "the red cat."
    got = cyclic.prefer_texts(["x"] * 4, [warm, cold, plain, warm], [cold, plain, warm, warm])
    assert_close(got, torch.tensor([2 / 3, 2 / 3, 2 / 3, 0.5]), length=3)          # a Condorcet cycle: 3 raters
    assert_close(cyclic.prefer_texts(["x"] * 2, [cold, plain], [warm, cold]), torch.tensor([1 / 3] * 2), length=3)
    # warm: σ(4 (s_a − s_b)), s = (#warm − #cold)/#words.
    got = rule_oracle("warm").prefer_texts(["x"], ["the warm kind cat"], ["the cold cat"])
    assert_close(got, torch.tensor([sigmoid(4 * (2 / 4 - (-1 / 3)))]), scale=4.0)    # σ of an argument ≤ 4
    with pytest.raises(NashprefError, match="unknown rule"):
        rule_oracle("nope")


def test_python_hook_loads_validates_and_reports(tmp_path):
    file = tmp_path / "raters.py"
    file.write_text(textwrap.dedent("""
        import numpy as np
        def shorter(prompts, a, b):
            return [1.0 if len(x) < len(y) else 0.0 if len(x) > len(y) else 0.5 for x, y in zip(a, b)]
        def as_array(prompts, a, b):
            return np.full(len(a), 0.25, dtype=np.float32)
        def too_few(prompts, a, b):
            return [0.5]
        def too_big(prompts, a, b):
            return [1.5] * len(a)
        def words(prompts, a, b):
            return ["yes"] * len(a)
        def nan(prompts, a, b):
            return [float("nan")] * len(a)
        NOT_CALLABLE = 3
    """))
    oracle = load_text_oracle(f"python:{file}:shorter")
    assert isinstance(oracle, PythonOracle)
    assert torch.equal(oracle.prefer_texts(X, A, B), torch.tensor([0.0, 0.5, 1.0, 0.0]))        # exact values
    assert torch.equal(PythonOracle(f"{file}:as_array").prefer_texts(X, A, B), torch.full((4,), 0.25))
    for name, message in [("too_few", "returned 1 values for 4 pairs"), ("too_big", "outside \\[0, 1\\]"),
                          ("words", "not a number"), ("nan", "outside")]:
        with pytest.raises(NashprefError, match=message):
            PythonOracle(f"{file}:{name}").prefer_texts(X, A, B)
    for spec, message in [(f"{file}:missing", "defines no 'missing'"), (f"{file}:NOT_CALLABLE", "not callable"),
                          (f"{tmp_path / 'none.py'}:f", "does not exist"), ("no_colon", "expected python:FILE")]:
        with pytest.raises(NashprefError, match=message):
            PythonOracle(spec)
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(NashprefError, match="importing .* failed: SyntaxError"):
        PythonOracle(f"{broken}:f")


@pytest.mark.parametrize("text, verdict", [
    ("A", "A"), ("B.", "B"), ("**B**", "B"), ("[A]", "A"), (" (B)", "B"), ("B\nbecause it is shorter", "B"),
    ("Response B is better", "B"), ("Answer: A", "A"), ("The better response is A.", "A"),
    ("Verdict: [[B]]", "B"), ("I prefer A over B.", "A"),
    ("A good answer would mention B", None), ("a cat", None), ("Both A and B are good", None), ("", None)])
def test_parse_verdict_on_fixed_strings(text, verdict):
    assert parse_verdict(text) == verdict


def test_judge_position_swap_by_hand():
    """A judge that always answers "A" has pure position bias: the swap turns it into ½ for every pair."""
    assert torch.equal(JudgeOracle(lambda msgs: ["A"] * len(msgs)).prefer_texts(X, A, B), torch.full((4,), 0.5))
    # A judge that picks the shorter response in either slot: P = 1, 0, ½ by hand; an unparseable answer is ½.
    def shorter(messages):
        out = []
        for m in messages:
            a = m.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
            b = m.split("[Response B]\n")[1].split("\n\nAnswer with")[0]
            out.append("A" if len(a) < len(b) else "B" if len(b) < len(a) else "no idea")
        return out
    judge = JudgeOracle(shorter)
    assert torch.equal(judge.prefer_texts(X, A, B), torch.tensor([0.0, 0.5, 1.0, 0.0]))          # exact values
    assert judge.unparsed == 2


def test_judge_with_the_tiny_model_aggregates_its_own_parsed_verdicts(tiny_dir):
    from nashpref.lm.loading import load_causal_lm
    from nashpref.lm.policy import render_prompt
    from nashpref.lm.samplers.hf import generate_texts

    judge = load_text_oracle(f"judge:{tiny_dir / 'policy'}", device="cpu")
    got = judge.prefer_texts(X, A, B)
    model, tok = load_causal_lm(str(tiny_dir / "policy"), device="cpu")
    requests = judge.requests(X, A, B)
    answers = [generate_texts(model, tok, [render_prompt(tok, m)], 16)[0] for m in requests]   # one at a time
    verdicts = [parse_verdict(t) for t in answers]
    score = {"A": 1.0, "B": 0.0, None: 0.5}
    expected = [(score[verdicts[i]] + 1 - score[verdicts[4 + i]]) / 2 for i in range(4)]
    assert_close(got, torch.tensor(expected), scale=1.0, length=2)    # means of two verdicts in {0, ½, 1}


def test_bad_preference_specs():
    for spec, message in [("reward", "expected KIND:ARG"), ("magic:x", "unknown kind 'magic'"),
                          ("reward:/no/such/model", "does not exist")]:
        with pytest.raises(NashprefError, match=message):
            load_text_oracle(spec)
