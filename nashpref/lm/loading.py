"""Loading models for language-model training: the optional `lm` extra, dtypes, local paths, causal LMs and
sequence classifiers (reward and pairwise models). Bad input is one MissingResource / BadInput line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from nashpref.errors import BadInput, MissingResource
from nashpref.validate import check_model_dir

LM_EXTRA = ("transformers", "datasets", "safetensors", "tokenizers")


def require_lm_extra(command: str) -> None:
    """MissingResource naming the missing package when the `lm` extra is not installed."""
    missing = [name for name in LM_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingResource(f"{command} needs the language-model extra ({', '.join(missing)} missing): "
                              "pip install -e '.[lm]'")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators that support it, fp32 otherwise (CPU bf16 matmuls are slow and imprecise)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_causal_lm(name_or_path: str, *, device: str | None = None, dtype: str | torch.dtype = "auto",
                   trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode; a missing local path or unknown id is a one-line MissingResource."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = default_dtype(target) if dtype == "auto" else parse_dtype(dtype)
    check_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise MissingResource(f"{name_or_path}: cannot load a causal LM: {str(exc).splitlines()[0]}") from None
    return model.to(target).eval(), tokenizer


def load_sequence_classifier(path: str, *, device: str | None = None, dtype: str = "auto", what: str = "model"):
    """(model, tokenizer) of an AutoModelForSequenceClassification, eval mode, right padding, a pad token set."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=default_dtype(target) if dtype == "auto" else parse_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise MissingResource(f"{path}: cannot load a sequence-classification {what}: "
                              f"{str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    return model.to(target).eval(), tokenizer


def check_model_path(name_or_path: str) -> None:
    """MissingResource when ``name_or_path`` looks like a local path but is not a directory."""
    path = Path(name_or_path)
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists() or name_or_path.count("/") > 1
    if looks_local and not path.is_dir():
        raise MissingResource(f"{name_or_path}: model directory does not exist")
    if looks_local:
        check_model_dir(path)


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (float32/fp32, bfloat16/bf16, float16/fp16)."""
    if isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if value not in names:
        raise BadInput(f"unknown dtype {value!r}; use auto, float32, bfloat16 or float16")
    return names[value]
