"""Fixtures for the language-model tests: one tiny Llama policy + reward model, built once per session.

Test modules import the fixtures (``from conftest_lm import tiny_dir, ...``); the build itself is cached at
module level so importing the fixture into several modules still builds once.
"""

from __future__ import annotations

import os

import pytest

import transformers  # noqa: F401  (the LM tests need the `lm` extra: see README, set-up command 2)

os.environ.setdefault("HF_HUB_OFFLINE", "1")      # nothing may be downloaded: every model is built here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def forward_tolerance(config, scale: float, tokens: int | None = None, sums: int = 1) -> float:
    """Rounding bound of a float32 quantity read off transformer forwards (nashpref.tolerance with the model's
    reduction length): ``scale`` is the size of the outputs (logits, rewards), ``tokens`` the longest sequence
    (default: the model's context), ``sums`` how many per-token terms are added (a sequence log-prob sums one per
    response token). One ulp per accumulation: the classic n·u bound of a length-n sum."""
    import torch

    from nashpref.tolerance import forward_length, tolerance

    tokens = tokens or config.max_position_embeddings
    return tolerance(torch.float32, scale=scale, length=forward_length(config, tokens) * sums, ulps=1)


def logit_scale(model, sequences) -> float:
    """max |logit| of ``model`` over full forwards of ``sequences`` (lists of token ids)."""
    import torch

    with torch.no_grad():
        return max(model(torch.tensor([list(ids)])).logits.abs().max().item() for ids in sequences)


def responses_tolerance(policy, contexts, responses, *others, sums: int = 1) -> float:
    """forward_tolerance for log-probs of ``responses`` (TokenResponses) to the prompts ``contexts`` of ``policy``
    (an LMPolicy), scaled by the largest logit of ``policy`` and of the models ``others`` on those sequences."""
    sequences = [policy.prompt_ids[c] + seq for c, row in zip(contexts.tolist(), responses.token_lists())
                 for seq in row]
    scale = max(logit_scale(model, sequences) for model in (policy.model, *others))
    return forward_tolerance(policy.model.config, scale, max(map(len, sequences)), sums)


PROMPTS = ["describe the red cat", "tell me about a robot",
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the river like?"}],
           "say something about a warm star"]
_BUILT: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Directory with policy/ and reward/ from nashpref.lm.tiny (small training budget: quality is not tested)."""
    if "dir" not in _BUILT:
        from nashpref.lm.tiny import make_tiny_model

        out = tmp_path_factory.mktemp("tiny")
        make_tiny_model(out, seed=0, dialogues=600, policy_steps=60, reward_steps=80)
        _BUILT["dir"] = out
    return _BUILT["dir"]


@pytest.fixture()
def policy_and_reference(tiny_dir):
    """A fresh (policy, reference) pair on the tiny policy over PROMPTS, fp32 on CPU."""
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig

    return LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu",
                                    sampling=SamplingConfig(max_new_tokens=8))
