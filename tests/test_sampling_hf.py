"""The transformers samplers: generate and the geometric mixture, against full forwards of the models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from conftest_lm import (PROMPTS, forward_tolerance, logit_scale, policy_and_reference,  # noqa: F401 (fixtures)
                         responses_tolerance, tiny_dir)
from nashpref.lm.policy import LMPolicy
from nashpref.lm.samplers.base import SamplingConfig
from nashpref.lm.samplers.hf import HFSampler, MixtureDecoder, sample_mixture
from nashpref.tolerance import assert_close

import transformers  # noqa: F401  (the LM tests need the `lm` extra: see README, set-up command 2)

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads


def perturbed_reference(policy: LMPolicy, scale: float = 0.3) -> LMPolicy:
    """A second causal LM on the same tokenizer whose next-token distributions clearly differ from π's."""
    model = copy.deepcopy(policy.model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return LMPolicy(model.requires_grad_(False), policy.tokenizer, policy.prompts, sampling=policy.sampling)


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_generate_shapes_masks_and_model_logprobs(policy_and_reference):
    policy, _ = policy_and_reference
    contexts = torch.tensor([3, 1, 2])
    out = HFSampler(SamplingConfig(max_new_tokens=16)).sample(policy, contexts, 4, torch.Generator().manual_seed(0))
    assert out.shape == (3, 4) and out.tokens.shape[-1] <= 16 and out.prompts == tuple(PROMPTS[c] for c in (3, 1, 2))
    eos = policy.tokenizer.eos_token_id
    for row_tokens, row_mask in zip(out.tokens.reshape(12, -1), out.mask.reshape(12, -1)):
        n = int(row_mask.sum())
        assert row_mask[:n].all() and not row_mask[n:].any()                # a prefix
        assert (row_tokens[n:] == policy.pad_id).all()
        assert eos not in row_tokens[:n - 1].tolist()                        # nothing after the end-of-turn token
        assert row_tokens[n - 1] == eos or n == 16
    assert (out.lengths < 16).any()                                            # some responses ended by themselves
    # The returned per-token log-probs are the model's own (temperature 1), as a teacher-forced pass gives them:
    # a KV-cached decode against one padded forward, equal up to the rounding of a forward.
    atol = responses_tolerance(policy, contexts, out)
    torch.testing.assert_close(out.logprobs, policy.token_log_probs(contexts, out).detach(), rtol=0, atol=atol)


def test_seeded_sampling_is_reproducible(policy_and_reference):
    policy, _ = policy_and_reference
    contexts = torch.tensor([0, 1, 2, 3])
    a = policy.sample(contexts, 3, torch.Generator().manual_seed(5))
    b = policy.sample(contexts, 3, torch.Generator().manual_seed(5))
    c = policy.sample(contexts, 3, torch.Generator().manual_seed(6))
    assert a.token_lists() == b.token_lists()
    assert a.token_lists() != c.token_lists()


def test_first_token_frequencies_follow_the_model(policy_and_reference):
    """At temperature 1 with top-k/top-p off no hidden warper (e.g. a checkpoint's top_k=50) may act."""
    policy, _ = policy_and_reference
    sampler = HFSampler(SamplingConfig(max_new_tokens=1, temperature=1.0))
    context = 1
    probs = full_logits(policy.model, policy.prompt_ids[context]).double().softmax(-1).numpy()
    probs = probs / probs.sum()
    draws = sampler.sample(policy, torch.tensor([context]), 4000, torch.Generator().manual_seed(1))
    counts = np.bincount(draws.tokens[0, :, 0].numpy(), minlength=probs.size)
    keep = probs * 4000 >= 5                                                   # pool rare tokens for chi-square
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[keep], probs[~keep].sum()) * 4000
    assert keep.sum() >= 3
    assert chisquare(observed, expected).pvalue > 1e-3
    top = HFSampler(SamplingConfig(max_new_tokens=1, top_k=2)).sample(policy, torch.tensor([context]), 200,
                                                                        torch.Generator().manual_seed(2))
    assert set(top.tokens.flatten().tolist()) <= set(np.argsort(probs)[-2:].tolist())


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_mixture_decoder_equals_softmax_of_mixed_full_forward_logits(policy_and_reference, beta):
    policy, _ = policy_and_reference
    reference = perturbed_reference(policy)
    rows = [policy.prompt_ids[2], policy.prompt_ids[0]]                        # different lengths: left padding
    decoder = MixtureDecoder(policy.model, reference.model, beta, policy.pad_id)
    feed = [[264, 347], [271, 19]]                                             # two forced tokens per row
    dist = decoder.start(rows)
    # KV-cached, left-padded decoding against full forwards: equal up to a forward's rounding, which depends on
    # the CPU's vector width and the thread count (2.8e-5 seen on one CPU), so the bound is derived, not picked
    longest = [row + [f[i] for f in feed] for i, row in enumerate(rows)]
    scale = max(logit_scale(policy.model, longest), logit_scale(reference.model, longest))
    atol = forward_tolerance(policy.model.config, scale, max(map(len, longest)))
    for step in range(3):
        for i, prompt in enumerate(rows):
            prefix = prompt + [f[i] for f in feed[:step]]
            mixed = (1 - beta) * full_logits(policy.model, prefix) + beta * full_logits(reference.model, prefix)
            torch.testing.assert_close(dist[i], mixed.log_softmax(-1), rtol=0, atol=atol)
        if step < 2:
            dist = decoder.step(torch.tensor(feed[step]))
    assert (full_logits(policy.model, rows[0]).softmax(-1) - full_logits(reference.model, rows[0]).softmax(-1)
            ).abs().max() > 0.1                                               # the two models really differ


def test_mixture_runs_one_cached_single_token_forward_per_model_per_token(policy_and_reference):
    policy, _ = policy_and_reference
    reference = perturbed_reference(policy)
    seen = {"policy": [], "reference": []}
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw, name=name: seen[name].append(kw["input_ids"].shape),
                                         with_kwargs=True)
             for m, name in ((policy.model, "policy"), (reference.model, "reference"))]
    try:
        out = sample_mixture(policy, reference, torch.tensor([0, 2]), 3, 0.5,
                             SamplingConfig(max_new_tokens=6), torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    steps = out.tokens.shape[-1]
    for shapes in seen.values():
        assert len(shapes) == steps                                            # prompt pass + steps−1 increments
        assert shapes[0][0] == 6 and all(s == (6, 1) for s in shapes[1:])


def test_sample_mixture_is_seeded_and_reports_mixture_logprobs(policy_and_reference):
    policy, _ = policy_and_reference
    reference = perturbed_reference(policy)
    config = SamplingConfig(max_new_tokens=5)
    a = sample_mixture(policy, reference, torch.tensor([1, 3]), 2, 0.4, config, torch.Generator().manual_seed(3))
    b = sample_mixture(policy, reference, torch.tensor([1, 3]), 2, 0.4, config, torch.Generator().manual_seed(3))
    assert a.token_lists() == b.token_lists()
    atol = responses_tolerance(policy, torch.tensor([1, 3]), a, reference.model)
    for b_idx, c in enumerate((1, 3)):
        for k, seq in enumerate(a.token_lists()[b_idx]):
            for t, token in enumerate(seq):
                prefix = policy.prompt_ids[c] + seq[:t]
                mixed = 0.6 * full_logits(policy.model, prefix) + 0.4 * full_logits(reference.model, prefix)
                assert abs(a.logprobs[b_idx, k, t].item() - mixed.log_softmax(-1)[token].item()) <= atol
    # β = 0 is π itself: the mixture's per-token log-probs are the policy's teacher-forced ones.
    pure = sample_mixture(policy, reference, torch.tensor([0]), 3, 0.0, config, torch.Generator().manual_seed(4))
    torch.testing.assert_close(pure.logprobs, policy.token_log_probs(torch.tensor([0]), pure).detach(),
                               rtol=0, atol=atol)


def test_filter_logits_by_hand():
    from nashpref.lm.samplers.hf import filter_logits

    log_p = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    nucleus = filter_logits(log_p, SamplingConfig(top_p=0.7)).softmax(-1)         # 0.5 < 0.7 ≤ 0.5 + 0.3
    assert_close(nucleus, torch.tensor([[0.625, 0.375, 0.0, 0.0]]), scale=1.0, length=4)     # float32 softmax
    top3 = filter_logits(log_p, SamplingConfig(top_k=3)).softmax(-1)
    assert_close(top3, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95, scale=1.0, length=4)
    hot = filter_logits(log_p, SamplingConfig(temperature=2.0)).softmax(-1)       # ∝ p^(1/2)
    root = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).sqrt()
    assert_close(hot, root / root.sum(), scale=1.0, length=4)
