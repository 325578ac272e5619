"""Linear preference models on a frozen model's embeddings: ``fit-preference --model bt-linear|skew-bilinear``, read
back by ``--preference linear:DIR``.

Features: φ(x, y) = Rᵀ h(x, y), where h is the base model's last hidden state mean-pooled over the conversation
(rendered as the reward model renders it) and R a seeded Gaussian projection to k dimensions (R = I for k = 0).
On φ, the two models of ``nashpref.theory.mle``, fitted by the same ridge logistic MLE:

* ``bt-linear``:      P(a ≻ b | x) = σ(θᵀ(φ_a − φ_b))                      (Xiong et al., arXiv 2312.11456)
* ``skew-bilinear``:  P(a ≻ b | x) = σ(φ_aᵀ A φ_b),  Aᵀ = −A (intransitive) (Ye et al., arXiv 2402.07314)

DIR holds ``linear.safetensors`` (w, the design covariance Σ = λI + Σ_k z_k z_kᵀ for confidence widths ‖z‖_{Σ⁻¹},
R), ``fit.json`` (the model kind, the base model's absolute path, λ) and ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from nashpref.core.game import DTYPE
from nashpref.errors import BadInput
from nashpref.preferences.base import Prompt, TextOracle, check_lengths, register
from nashpref.theory.mle import bilinear_pair_features, fit_logistic, skew_from_vector

MODELS = ("bt-linear", "skew-bilinear")
WEIGHTS = "linear.safetensors"


def projection(hidden: int, dim: int, seed: int) -> Tensor:
    """(hidden, k) R with i.i.d. N(0, 1/k) entries (seeded), or the identity for k = 0."""
    if dim == 0:
        return torch.eye(hidden, dtype=DTYPE)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, dim, generator=g, dtype=DTYPE) / math.sqrt(dim)


@torch.no_grad()
def embed(model, tokenizer, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 16,
          max_length: int | None = None) -> Tensor:
    """(n, hidden) float64 mean-pooled last hidden states of the conversations; each distinct text once."""
    from nashpref.preferences.reward import format_conversation

    texts = [format_conversation(tokenizer, p, r) for p, r in zip(prompts, responses)]
    unique = list(dict.fromkeys(texts))
    chat = bool(getattr(tokenizer, "chat_template", None))
    device = next(model.parameters()).device
    pooled = []
    for start in range(0, len(unique), batch_size):
        enc = tokenizer(unique[start:start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=not chat, truncation=max_length is not None,
                        max_length=max_length).to(device)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1].double()
        mask = enc["attention_mask"].unsqueeze(-1).double()
        pooled.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    table = torch.cat(pooled) if pooled else torch.zeros(0, model.config.hidden_size, dtype=DTYPE)
    index = {t: i for i, t in enumerate(unique)}
    return table[torch.tensor([index[t] for t in texts], dtype=torch.long)]


def pair_features(kind: str, phi_a: Tensor, phi_b: Tensor) -> Tensor:
    """z(x, a, b): φ_a − φ_b (bt-linear) or (φ_a,i φ_b,j − φ_a,j φ_b,i)_{i<j} (skew-bilinear)."""
    return phi_a - phi_b if kind == "bt-linear" else bilinear_pair_features(phi_a, phi_b)


@dataclasses.dataclass
class LinearPreference:
    """A fitted linear preference model."""

    kind: str
    w: Tensor           # (D,) θ, or (A_ij)_{i<j}
    sigma: Tensor       # (D, D) design covariance
    projection: Tensor  # (hidden, k)
    ridge: float

    def logits(self, phi_a: Tensor, phi_b: Tensor) -> Tensor:
        return pair_features(self.kind, phi_a, phi_b) @ self.w

    def width(self, phi_a: Tensor, phi_b: Tensor) -> Tensor:
        """‖z‖_{Σ⁻¹} per pair: the confidence width of the MLE along z."""
        z = pair_features(self.kind, phi_a, phi_b)
        return torch.sqrt((z * torch.linalg.solve(self.sigma, z.T).T).sum(-1))

    def matrix(self) -> Tensor:
        """A (skew-bilinear only)."""
        return skew_from_vector(self.w, self.projection.shape[1])


def fit_linear_model(kind: str, phi_a: Tensor, phi_b: Tensor, labels: Tensor, ridge: float,
                     proj: Tensor) -> LinearPreference:
    """Ridge MLE on already projected features φ (n, k)."""
    if kind not in MODELS:
        raise BadInput(f"--model {kind!r}: choose pairwise, {', '.join(MODELS)}")
    fit = fit_logistic(pair_features(kind, phi_a, phi_b), labels.to(DTYPE), ridge)
    return LinearPreference(kind, fit.w, fit.sigma, proj, ridge)


def nll_and_accuracy(model: LinearPreference, phi_a: Tensor, phi_b: Tensor, labels: Tensor) -> dict[str, float]:
    d, y = model.logits(phi_a, phi_b), labels.to(DTYPE)
    loss = (torch.nn.functional.softplus(d) - y * d).mean().item()
    decided = y != 0.5
    correct = ((d > 0) == (y > 0.5))[decided]
    return {"loss": loss, "accuracy": correct.double().mean().item() if decided.any() else float("nan")}


def save_linear(directory: Path, model: LinearPreference, base: str, extra: dict | None = None) -> None:
    """linear.safetensors and fit.json (with ``extra``: the run's config and metrics) into ``directory``."""
    from safetensors.torch import save_file

    from nashpref.io import write_json

    save_file({"w": model.w.contiguous(), "sigma": model.sigma.contiguous(),
               "projection": model.projection.contiguous()}, str(directory / WEIGHTS))
    write_json(directory / "fit.json", {"model": model.kind, "base": str(Path(base).resolve()),
                                        "ridge": model.ridge} | (extra or {}))


def fit_rows(config, train, validation) -> tuple[LinearPreference, list[dict]]:
    """Embed ``train`` (and ``validation``) rows with the frozen base, fit ``config.model``; one metrics row."""
    import time

    start = time.perf_counter()
    backbone, tokenizer = load_backbone(config.base, config.device, config.dtype)

    def features(rows) -> tuple[Tensor, Tensor]:
        h = embed(backbone, tokenizer, list(rows.prompts) * 2, list(rows.a) + list(rows.b), config.batch_size,
                  config.max_length)
        phi = h @ proj
        return phi[:len(rows)], phi[len(rows):]

    proj = projection(backbone.config.hidden_size, config.feature_dim, config.seed)
    phi_a, phi_b = features(train)
    model = fit_linear_model(config.model, phi_a, phi_b, train.labels, config.ridge, proj)
    held = features(validation) if validation is not None else None

    def report(epoch: int, fitted: LinearPreference) -> dict:
        """The pairwise fit's row keys: epoch 0 is the input-blind w = 0 (loss log 2), epoch 1 the MLE."""
        row = {"epoch": epoch, "train_loss": None}
        row |= {f"train_{k}_after": v for k, v in nll_and_accuracy(fitted, phi_a, phi_b, train.labels).items()}
        if held is not None:
            row |= {f"validation_{k}": v for k, v in nll_and_accuracy(fitted, *held, validation.labels).items()}
        return row | {"parameters": fitted.w.numel(), "seconds": time.perf_counter() - start}

    return model, [report(0, dataclasses.replace(model, w=torch.zeros_like(model.w))), report(1, model)]


def load_linear(directory: str | Path) -> tuple[LinearPreference, str]:
    """(the model, its base model's path) from a fit-preference output directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / WEIGHTS).is_file() or not (directory / "fit.json").is_file():
        raise BadInput(f"--preference linear:{directory}: not a fit-preference --model bt-linear|skew-bilinear "
                       f"output (needs {WEIGHTS} and fit.json)")
    meta = json.loads((directory / "fit.json").read_text(encoding="utf-8"))
    t = load_file(str(directory / WEIGHTS))
    return LinearPreference(meta["model"], t["w"], t["sigma"], t["projection"], meta["ridge"]), meta["base"]


@register
class LinearOracle(TextOracle):
    """σ(wᵀz(φ(x, a), φ(x, b))) with φ from the base model the fit used."""

    prefix = "linear"

    def __init__(self, model: LinearPreference, backbone, tokenizer, batch_size: int = 16):
        self.model, self.backbone, self.tokenizer, self.batch_size = model, backbone, tokenizer, batch_size

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "LinearOracle":
        model, base = load_linear(arg)
        backbone, tokenizer = load_backbone(base, device, "float32")
        return cls(model, backbone, tokenizer)

    def features(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        return embed(self.backbone, self.tokenizer, prompts, responses, self.batch_size) @ self.model.projection

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths("LinearOracle", prompts, a, b)
        phi = self.features(list(prompts) * 2, list(a) + list(b))
        return torch.sigmoid(self.model.logits(phi[:n], phi[n:])).float()


def load_backbone(path: str, device: str | None, dtype: str = "auto"):
    """(model, tokenizer) of the base whose hidden states are the features (right padding, a pad token)."""
    from transformers import AutoModel, AutoTokenizer

    from nashpref.lm.loading import check_model_path, default_dtype, parse_dtype

    from transformers.utils import logging as hf_logging

    check_model_path(path)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()        # a causal LM's unused head is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=default_dtype(target) if dtype == "auto"
                                          else parse_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: cannot load the feature model: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return model.to(target).eval(), tokenizer


def enhancer_choice(oracle: LinearOracle, prompt: Prompt, responses: Sequence[str], budget: float,
                    generator: torch.Generator) -> dict:
    """The enhancer's responses among ``responses`` (draws of the main policy for ``prompt``) by rejection sampling
    on the fitted model's features and Σ (``nashpref.theory.rejection``), with the uncertainty ‖w‖_{Σ⁻¹} of the
    comparison main-vs-main (``width_main``) and main-vs-enhancer (``width_enhancer``)."""
    from nashpref.theory.bandit import LinearBandit
    from nashpref.theory.enhancer import affine_map, uncertainty
    from nashpref.theory.rejection import rejection_enhancer

    kind = "bt" if oracle.model.kind == "bt-linear" else "skew"
    phi = oracle.features([prompt] * len(responses), list(responses)).unsqueeze(0)          # (1, K, k)
    result = rejection_enhancer(phi, oracle.model.sigma, budget, generator, kind)
    uniform = torch.full(phi.shape[:2], 1.0 / phi.shape[1], dtype=DTYPE)
    G, g = affine_map(LinearBandit(phi=phi, mu=uniform, tau=1.0), uniform, kind)
    sigma_inv = torch.linalg.inv(oracle.model.sigma)

    def width(pi: Tensor) -> float:
        return uncertainty(sigma_inv, torch.einsum("cn,cnd->cd", pi, G) + g).item()

    accepted = result.accepted[0].tolist()
    return {"prompt": prompt, "responses": list(responses), "weights": result.weights[0].tolist(),
            "accept": result.accept[0].tolist(), "enhancer": [r for r, keep in zip(responses, accepted) if keep],
            "width_main": width(uniform), "width_enhancer": width(result.weights)}
