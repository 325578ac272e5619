"""``nashpref fit-preference``: fit the ``pairwise:`` oracle's model by maximum likelihood on preference rows
(``--model bt-linear|skew-bilinear``: the linear models on frozen embeddings of ``nashpref.preferences.linear``).

The model is the one :class:`nashpref.preferences.pairwise.PairwiseOracle` reads: a sequence classifier with one
logit s(x, a, b) on the text ``format_pair`` builds, made antisymmetric by scoring both orders,

    P(a ≻ b | x) = σ(d),   d = (s(x, a, b) − s(x, b, a)) / 2.

Each row (x, a, b, y) has a label y ∈ [0, 1]: a 0/1 verdict or a probability (the rounds that ``nashpref train``
saves hold P(a ≻ b) in their ``preference`` column). The loss is the negative log-likelihood of the labels,
−[y log σ(d) + (1 − y) log σ(−d)], i.e. binary cross-entropy on the logit d. A model that ignores its input has
d = 0 on every row and loss exactly log 2, so a loss below log 2 means the model has learnt something.

The output directory is a transformers checkpoint (model + tokenizer) that ``--preference pairwise:DIR`` loads,
plus ``metrics.jsonl`` (one row per epoch; epoch 0 is the starting model) and ``fit.json``. It appears only once
training has finished; bad input raises a one-line BadInput before anything is written.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nashpref.checks import choice, integer, number
from nashpref.errors import BadInput
from nashpref.io import check_output_dir, jsonable, staged_output, write_json, write_jsonl

__all__ = ["FitPreferenceConfig", "FitResult", "PreferenceRows", "run_fit_preference", "load_preference_rows",
           "pair_logits"]


@dataclasses.dataclass
class FitPreferenceConfig:
    """Fit a preference model by maximum likelihood on (prompt, a, b, label) rows: a pairwise classifier (what
    --preference pairwise:DIR loads; DIR: the model and tokenizer, metrics.jsonl, fit.json) or, with --model, a
    linear BT / skew-bilinear model on the frozen base's embeddings (--preference linear:DIR)."""

    data: str
    """Rows: a local .jsonl / .json / .parquet / .csv file or a hub dataset id."""
    base: str
    """Model to start from: a transformers id or directory, a causal LM or a sequence classifier; it gets a
    fresh one-logit score head."""
    out: Path
    """Output directory DIR (created only when training has finished)."""
    prompt_column: str = "prompt"
    """Column with the prompt (text, or a list of chat messages)."""
    a_column: str = "a"
    """Column with the first response."""
    b_column: str = "b"
    """Column with the second response."""
    label_column: str = "label"
    """Column with P(a ≻ b) or a 0/1 (or true/false) verdict. The rounds of `nashpref train` call it
    'preference'."""
    split: str = "train"
    """Dataset split to read when --data is a hub id."""
    validation: float = 0.1
    """Share of the rows (drawn with --seed) held out to report validation loss and accuracy; 0: none."""
    epochs: int = 3
    """Passes over the training rows."""
    batch_size: int = 16
    """Rows per optimizer step (each row is read twice, once per order)."""
    lr: float = 5e-5
    """Learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = 1024
    """Longest pair text in tokens; longer texts lose their beginning (the prompt), never the responses' end."""
    seed: int = 0
    """Seed of the validation split, the score head's initial weights and the batch order."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights' dtype: auto is bf16 on a GPU that supports it, else float32."""
    device: str | None = None
    """Torch device (default: cuda when available, else cpu)."""
    model: Literal["pairwise", "bt-linear", "skew-bilinear"] = "pairwise"
    """pairwise: fine-tune the base as a pairwise classifier (--preference pairwise:DIR). bt-linear /
    skew-bilinear: keep the base frozen, embed each conversation (mean-pooled last hidden state, projected to
    --feature-dim) and fit linear Bradley-Terry or the skew-symmetric bilinear (intransitive) model by ridge MLE;
    DIR keeps the fit and its design covariance Σ (--preference linear:DIR). --epochs and --lr do not apply."""
    ridge: float = 1.0
    """[bt-linear, skew-bilinear] Ridge λ of the MLE (Σ = λI + Σ z zᵀ)."""
    feature_dim: int = 16
    """[bt-linear, skew-bilinear] k: the hidden state is projected to k dimensions by a seeded Gaussian matrix
    (0: the full hidden state). skew-bilinear has k(k − 1)/2 parameters."""


@dataclasses.dataclass
class PreferenceRows:
    """Rows of a preference dataset."""

    prompts: list
    """Prompts: text or chat messages."""
    a: list[str]
    """First responses."""
    b: list[str]
    """Second responses."""
    labels: Tensor
    """(n,) float64 P(a ≻ b) or 0/1 labels."""

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, index: Sequence[int]) -> "PreferenceRows":
        index = list(index)
        return PreferenceRows([self.prompts[i] for i in index], [self.a[i] for i in index],
                              [self.b[i] for i in index], self.labels[torch.tensor(index, dtype=torch.long)])


@dataclasses.dataclass
class FitResult:
    """What ``run_fit_preference`` did."""

    rows: list[dict]
    """One metrics row per epoch (epoch 0: the starting model)."""
    out: Path
    """The output directory."""


def validate_config(config: FitPreferenceConfig) -> None:
    from nashpref.lm.loading import require_lm_extra

    require_lm_extra("fit-preference")
    for name in ("epochs", "batch_size", "max_length"):
        integer(getattr(config, name), "--" + name.replace("_", "-"))
    number(config.lr, "--lr")
    number(config.weight_decay, "--weight-decay", low_open=False)
    number(config.ridge, "--ridge")
    integer(config.feature_dim, "--feature-dim", 0)
    choice(config.model, "--model", ("pairwise", "bt-linear", "skew-bilinear"))
    if not (isinstance(config.validation, (int, float)) and 0 <= config.validation < 1):
        raise BadInput(f"--validation must be in [0, 1), got {config.validation!r}")


def load_preference_rows(spec: str, prompt_column: str = "prompt", a_column: str = "a", b_column: str = "b",
                         label_column: str = "label", split: str = "train") -> PreferenceRows:
    """Rows from a local file or a hub dataset; a missing column or a bad value is a one-line BadInput."""
    from nashpref.lm.data import load_table

    ds = load_table(spec, split, "preference data")
    columns = {"prompt": prompt_column, "a": a_column, "b": b_column, "label": label_column}
    for role, column in columns.items():
        if column not in ds.column_names:
            raise BadInput(f"{spec}: no column {column!r} (columns: {', '.join(ds.column_names)}); pass "
                           f"--{role}-column")
    if len(ds) == 0:
        raise BadInput(f"{spec}: no rows")
    prompts, a, b, labels = (ds[c] for c in (prompt_column, a_column, b_column, label_column))
    for i, (prompt, x, y, label) in enumerate(zip(prompts, a, b, labels)):
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and
                                            all(isinstance(m, dict) and "content" in m for m in prompt))):
            raise BadInput(f"{spec}: row {i}: {prompt_column!r} must be text or a list of chat messages")
        if not isinstance(x, str) or not isinstance(y, str):
            raise BadInput(f"{spec}: row {i}: {a_column!r} and {b_column!r} must be text")
        if isinstance(label, bool):
            continue
        if not isinstance(label, (int, float)) or not (0.0 <= label <= 1.0):
            raise BadInput(f"{spec}: row {i}: {label_column!r} must be a probability in [0, 1] or a 0/1 label, "
                           f"got {label!r}")
    return PreferenceRows(list(prompts), list(a), list(b), torch.tensor([float(v) for v in labels],
                                                                        dtype=torch.float64))


def load_base(config: FitPreferenceConfig):
    """(model, tokenizer): the base with a one-logit score head (seeded), a pad token, right padding and left
    truncation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nashpref.lm.loading import check_model_path, parse_dtype, default_dtype

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_model_path(config.base)
    with torch.random.fork_rng(devices=[]), _quiet_loading():
        torch.manual_seed(config.seed)          # the fresh score head
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.base)
            model = AutoModelForSequenceClassification.from_pretrained(
                config.base, num_labels=1, ignore_mismatched_sizes=True,
                dtype=default_dtype(device) if config.dtype == "auto" else parse_dtype(config.dtype))
        except (OSError, ValueError) as exc:
            raise BadInput(f"--base {config.base}: cannot load a sequence classifier: "
                           f"{str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return model.to(device), tokenizer


@contextmanager
def _quiet_loading():
    """transformers reports the base's missing score head and unused LM head; both are expected here."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def pair_logits(model, tokenizer, prompts: Sequence, a: Sequence[str], b: Sequence[str],
                max_length: int | None = None) -> Tensor:
    """(n,) d = (s(x, a, b) − s(x, b, a)) / 2, the logit of P(a ≻ b) as PairwiseOracle computes it (with
    gradients when they are enabled)."""
    from nashpref.preferences.pairwise import format_pair

    texts = ([format_pair(tokenizer, p, x, y) for p, x, y in zip(prompts, a, b)] +
             [format_pair(tokenizer, p, y, x) for p, x, y in zip(prompts, a, b)])
    chat = bool(getattr(tokenizer, "chat_template", None))
    device = next(model.parameters()).device
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat,
                    truncation=max_length is not None, max_length=max_length).to(device)
    logits = model(**enc).logits.float()
    s = logits[:, 0] if logits.shape[1] == 1 else logits[:, 0] - logits[:, 1]
    n = len(a)
    return (s[:n] - s[n:]) / 2


def nll(d: Tensor, labels: Tensor) -> Tensor:
    """Mean −[y log σ(d) + (1 − y) log σ(−d)]: the negative log-likelihood of the labels under P = σ(d)."""
    return F.binary_cross_entropy_with_logits(d, labels.to(d))


@torch.no_grad()
def evaluate(model, tokenizer, rows: PreferenceRows, batch_size: int, max_length: int) -> dict[str, float]:
    """Loss and accuracy (sign of d against label > ½, rows labelled exactly ½ left out) over ``rows``."""
    model.eval()
    ds = [pair_logits(model, tokenizer, rows.prompts[i:i + batch_size], rows.a[i:i + batch_size],
                      rows.b[i:i + batch_size], max_length).double().cpu() for i in range(0, len(rows), batch_size)]
    d = torch.cat(ds)
    decided = rows.labels != 0.5
    correct = ((d > 0) == (rows.labels > 0.5))[decided]
    return {"loss": nll(d, rows.labels).item(),
            "accuracy": correct.double().mean().item() if decided.any() else float("nan")}


def run_fit_preference(config: FitPreferenceConfig) -> FitResult:
    """Fit the pairwise model; returns the metrics rows. Nothing is written before training has finished."""
    validate_config(config)
    check_output_dir(config.out)
    data = load_preference_rows(config.data, config.prompt_column, config.a_column, config.b_column,
                                config.label_column, config.split)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed)).tolist()
    held = round(config.validation * len(data)) if len(data) > 1 else 0
    held = max(held, 1) if config.validation > 0 and len(data) > 1 else held
    train, validation = data.subset(sorted(order[held:])), data.subset(sorted(order[:held])) if held else None
    if config.model != "pairwise":
        return _run_linear(config, train, validation)
    model, tokenizer = load_base(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()

    def report(epoch: int, train_loss: float | None) -> dict:
        row = {"epoch": epoch, "train_loss": train_loss}
        row |= {f"train_{k}_after": v for k, v in evaluate(model, tokenizer, train, config.batch_size,
                                                             config.max_length).items()}
        if validation is not None:
            row |= {f"validation_{k}": v for k, v in evaluate(model, tokenizer, validation, config.batch_size,
                                                              config.max_length).items()}
        return row | {"seconds": time.perf_counter() - start}

    rows = [report(0, None)]
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses = []
        for batch in torch.randperm(len(train), generator=generator).split(config.batch_size):
            part = train.subset(batch.tolist())
            loss = nll(pair_logits(model, tokenizer, part.prompts, part.a, part.b, config.max_length), part.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        rows.append(report(epoch, sum(losses) / len(losses)))
    model.eval()
    with staged_output(config.out) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.padding_side, tokenizer.truncation_side = "right", "right"
        tokenizer.save_pretrained(staging)
        write_jsonl(staging / "metrics.jsonl", rows)
        write_json(staging / "fit.json", {"config": jsonable(dataclasses.asdict(config)),
                                          "train_rows": len(train),
                                          "validation_rows": 0 if validation is None else len(validation),
                                          "final": rows[-1]})
    return FitResult(rows=rows, out=config.out)


def _run_linear(config: FitPreferenceConfig, train: PreferenceRows, validation: PreferenceRows | None) -> FitResult:
    from nashpref.preferences.linear import fit_rows, save_linear

    model, rows = fit_rows(config, train, validation)
    with staged_output(config.out) as staging:
        write_jsonl(staging / "metrics.jsonl", rows)
        save_linear(staging, model, config.base, {"config": jsonable(dataclasses.asdict(config)),
                                                  "train_rows": len(train),
                                                  "validation_rows": 0 if validation is None else len(validation),
                                                  "final": rows[-1]})
    return FitResult(rows=rows, out=config.out)
