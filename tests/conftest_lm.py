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
