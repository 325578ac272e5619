"""LMPolicy against per-sequence computations from the model's own logits (no padding, no batching)."""

from __future__ import annotations

import pytest
import torch

from conftest_lm import (PROMPTS, forward_tolerance, policy_and_reference, responses_tolerance,  # noqa: F401
                         tiny_dir)
from nashpref.errors import NashprefError
from nashpref.lm.policy import LMPolicy
from nashpref.lm.responses import TokenResponses, responses_from_lists
from nashpref.tolerance import assert_close

import transformers

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads


def manual_log_prob(model, prompt_ids, response):
    """Σ_t log softmax(logits_{t−1})[y_t] over the response, from one unpadded forward of prompt + response."""
    seq = torch.tensor([list(prompt_ids) + list(response)])
    log_probs = model(seq).logits[0].float().log_softmax(-1)
    start = len(prompt_ids)
    return sum(log_probs[start + i - 1, token] for i, token in enumerate(response))


def fixed_responses(policy):
    """Responses of different lengths (one ends with the end-of-turn token) for contexts (2, 0)."""
    tok = policy.tokenizer
    words = [tok.encode("the cat", add_special_tokens=False),
             tok.encode("a bright and quiet river sings.", add_special_tokens=False) + [tok.eos_token_id],
             tok.encode("robot", add_special_tokens=False),
             tok.encode("the old lamp is warm", add_special_tokens=False)]
    return responses_from_lists([[words[0], words[1]], [words[2], words[3]]], [PROMPTS[2], PROMPTS[0]], tok)


def test_prompts_are_rendered_with_the_chat_template(policy_and_reference):
    policy, _ = policy_and_reference
    tok = policy.tokenizer
    by_hand = "<|bos|><|system|>\nbe brief<|end|>\n<|user|>\nwhat is the river like?<|end|>\n<|assistant|>\n"
    assert policy.prompt_ids[2] == tok.encode(by_hand, add_special_tokens=False)
    assert policy.prompt_ids[0] == tok.encode("<|bos|><|user|>\ndescribe the red cat<|end|>\n<|assistant|>\n",
                                              add_special_tokens=False)


def test_log_prob_equals_manual_sum_and_normalised_is_mean(policy_and_reference):
    policy, _ = policy_and_reference
    contexts = torch.tensor([2, 0])
    responses = fixed_responses(policy)
    got = policy.log_prob(contexts, responses)
    lists = responses.token_lists()
    with torch.no_grad():
        expected = torch.tensor([[manual_log_prob(policy.model, policy.prompt_ids[c], lists[b][k]).item()
                                  for k in range(2)] for b, c in enumerate(contexts.tolist())])
    # one padded batch against unpadded forwards; a sequence log-prob sums one term per response token
    longest = max(len(r) for row in lists for r in row)
    atol = responses_tolerance(policy, contexts, responses, sums=longest)
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=atol)
    lengths = torch.tensor([[len(r) for r in row] for row in lists], dtype=torch.float32)
    torch.testing.assert_close(policy.log_prob(contexts, responses, normalize=True).detach(), expected / lengths,
                               rtol=0, atol=atol)


def test_log_prob_gradient_equals_manual_gradient(policy_and_reference):
    """Padding and prompt tokens must not leak into the gradient: compare with per-sequence autograd."""
    policy, _ = policy_and_reference
    contexts = torch.tensor([2, 0])
    responses = fixed_responses(policy)
    weight = policy.model.model.layers[0].mlp.up_proj.weight
    policy.log_prob(contexts, responses).sum().backward()
    batched = weight.grad.clone()
    weight.grad = None
    lists = responses.token_lists()
    total = sum(manual_log_prob(policy.model, policy.prompt_ids[c], lists[b][k])
                for b, c in enumerate(contexts.tolist()) for k in range(2))
    total.backward()
    assert batched.abs().max() > 1e-3
    # backward doubles the forward's reduction chain; the weight gradient sums over every response token
    tokens = sum(len(r) for row in lists for r in row)
    longest = max(len(policy.prompt_ids[c]) + len(r) for c, row in zip(contexts.tolist(), lists) for r in row)
    atol = forward_tolerance(policy.model.config, batched.abs().max().item(), longest, sums=2 * tokens)
    torch.testing.assert_close(batched, weight.grad, rtol=0, atol=atol)


def test_token_responses_take_rows_cat_and_texts(policy_and_reference):
    policy, _ = policy_and_reference
    responses = fixed_responses(policy)
    lists = responses.token_lists()
    picked = responses.take(torch.tensor([[1, 1, 0], [0, 1, 0]]))
    assert picked.shape == (2, 3)
    assert picked.token_lists() == [[lists[0][1], lists[0][1], lists[0][0]], [lists[1][0], lists[1][1], lists[1][0]]]
    row = responses.rows(torch.tensor([1]))
    assert row.token_lists() == [lists[1]] and row.prompts == (PROMPTS[0],)
    both = TokenResponses.cat([responses, picked], dim=1)
    assert both.token_lists() == [lists[0] + picked.token_lists()[0], lists[1] + picked.token_lists()[1]]
    assert responses.texts[0] == ["the cat", "a bright and quiet river sings."]
    assert responses.lengths.tolist() == [[len(x) for x in r] for r in lists]


def test_frozen_view_answers_at_theta_t_and_refuses_after_a_step(policy_and_reference):
    policy, _ = policy_and_reference
    contexts, responses = torch.tensor([2, 0]), fixed_responses(policy)
    before = policy.log_prob(contexts, responses).detach()
    frozen = policy.frozen()
    value = frozen.log_prob(contexts, responses)
    assert not value.requires_grad
    torch.testing.assert_close(value, before, rtol=0, atol=0)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    (-policy.log_prob(contexts, responses).sum()).backward()
    optimizer.step()
    assert (policy.log_prob(contexts, responses).detach() - before).abs().max() > 1e-2
    with pytest.raises(RuntimeError, match="changed after frozen"):
        frozen.log_prob(contexts, responses)


def test_reference_is_an_untouched_copy_and_state_dict_round_trips(policy_and_reference):
    policy, reference = policy_and_reference
    contexts, responses = torch.tensor([2, 0]), fixed_responses(policy)
    start = policy.state_dict()
    reference_before = reference.log_prob(contexts, responses).detach()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    (-policy.log_prob(contexts, responses).sum()).backward()
    optimizer.step()
    torch.testing.assert_close(reference.log_prob(contexts, responses).detach(), reference_before, rtol=0, atol=0)
    policy.load_state_dict(start)
    torch.testing.assert_close(policy.log_prob(contexts, responses).detach(), reference_before, rtol=0, atol=0)


def test_lora_policy_trains_only_the_adapter_and_saves_merged_weights(tiny_dir, tmp_path):
    policy, reference = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu",
                                                 lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                                       "init_lora_weights": False})
    contexts, responses = torch.tensor([2, 0]), fixed_responses(policy)
    assert all("lora_" in name for name in policy.state_dict())
    base_q = reference.model.model.layers[0].self_attn.q_proj.weight
    policy_q = policy.model.get_base_model().model.layers[0].self_attn.q_proj
    assert base_q.data_ptr() == policy_q.base_layer.weight.data_ptr()        # shared, not copied
    plain = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
    with torch.no_grad():
        plain_value = torch.tensor([[manual_log_prob(plain, policy.prompt_ids[c], r).item() for r in row]
                                    for c, row in zip(contexts.tolist(), responses.token_lists())])
    # The reference is the base model, never the adapter "switched off" of a trained policy.
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    (-policy.log_prob(contexts, responses).sum()).backward()
    optimizer.step()
    longest = max(len(r) for row in responses.token_lists() for r in row)
    atol = responses_tolerance(policy, contexts, responses, plain, sums=longest)
    torch.testing.assert_close(reference.log_prob(contexts, responses).detach(), plain_value, rtol=0, atol=atol)
    # Merged weights: W + (alpha/r)·B·A, checked by hand on one layer, then through a reload.
    layer = policy.model.get_base_model().model.layers[0].self_attn.q_proj
    by_hand = base_q + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert_close(policy.full_state()["model.layers.0.self_attn.q_proj.weight"], by_hand.detach(), length=4)  # r = 4
    policy.save_pretrained(tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        merged_value = torch.tensor([[manual_log_prob(merged, policy.prompt_ids[c], r).item() for r in row]
                                     for c, row in zip(contexts.tolist(), responses.token_lists())])
    atol = responses_tolerance(policy, contexts, responses, merged, sums=longest)
    torch.testing.assert_close(policy.log_prob(contexts, responses).detach(), merged_value, rtol=0, atol=atol)
    assert (merged_value - plain_value).abs().max() > 1e-2


def test_missing_model_path_is_a_one_line_error(tmp_path):
    with pytest.raises(NashprefError, match="does not exist"):
        LMPolicy.from_pretrained(str(tmp_path / "nope"), PROMPTS)


def test_tiny_model_is_deterministic_in_its_seed(tmp_path):
    from safetensors.torch import load_file

    from nashpref.lm.tiny import make_tiny_model

    small = {"dialogues": 100, "policy_steps": 3, "reward_steps": 3}
    runs = [make_tiny_model(tmp_path / name, seed=seed, **small) for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    for part in ("policy", "reward"):
        a, b, c = (load_file(run[part] / "model.safetensors") for run in runs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert any(a[k].shape != c[k].shape or not torch.equal(a[k], c[k]) for k in a)


def test_make_tiny_model_script_writes_the_contracted_directories(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "make_tiny_model.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--dialogues", "100",
                    "--policy-steps", "2", "--reward-steps", "2", "--seed", "3"], check=True, capture_output=True)
    policy = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    reward = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "policy")
    assert policy.config.model_type == "llama" and reward.config.num_labels == 1
    assert reward.config.pad_token_id == tok.pad_token_id is not None
    assert tok.chat_template and tok.eos_token == "<|end|>" and len(tok) == policy.config.vocab_size


def test_reference_from_another_path_must_share_the_tokenizer(tiny_dir, tmp_path):
    from nashpref.lm.tiny import make_tiny_model

    policy, reference = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu",
                                                 reference=str(tiny_dir / "policy"))
    contexts, responses = torch.tensor([2, 0]), fixed_responses(policy)
    atol = responses_tolerance(policy, contexts, responses, sums=max(len(r) for row in responses.token_lists()
                                                                     for r in row))
    torch.testing.assert_close(reference.log_prob(contexts, responses), policy.log_prob(contexts, responses).detach(),
                               rtol=0, atol=atol)
    make_tiny_model(tmp_path, seed=1, dialogues=50, policy_steps=1, reward_steps=1)     # another tokenizer
    with pytest.raises(NashprefError, match="tokenizer differs"):
        LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu", reference=str(tmp_path / "policy"))
