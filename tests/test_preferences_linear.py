"""`fit-preference --model bt-linear|skew-bilinear`: on the tiny model's embeddings with labels drawn from a known
parameter, the MLE recovers it at the asymptotic rate (the χ² law of (ŵ − w)ᵀH(ŵ − w), and the error shrinking
like 1/√n); the written directory keeps Σ = λI + Σ z zᵀ and `--preference linear:DIR` answers σ(ŵᵀz)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from scipy.stats import chi2

from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.cli import main
from nashpref.core.game import DTYPE
from nashpref.errors import NashprefError
from nashpref.io import read_jsonl
from nashpref.lm.tiny import COLD, NEUTRAL, NOUNS, PROMPTS, WARM
from nashpref.preferences import load_text_oracle
from nashpref.preferences.fit import FitPreferenceConfig, run_fit_preference
from nashpref.preferences.linear import (embed, fit_linear_model, load_backbone, load_linear, pair_features,
                                         projection)
from nashpref.tolerance import tolerance


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texts(count: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    adjectives = WARM + COLD + NEUTRAL

    def response() -> str:
        return f"the {rng.choice(adjectives)} {rng.choice(NOUNS)} is {rng.choice(adjectives)}."

    prompts = [rng.choice(PROMPTS).format(adj=rng.choice(NEUTRAL), noun=rng.choice(NOUNS)) for _ in range(count)]
    return prompts, [response() for _ in range(count)], [response() for _ in range(count)]


def features(tiny, prompts, a, b, k: int, seed: int):
    backbone, tokenizer = load_backbone(str(tiny / "policy"), "cpu", "float32")
    h = embed(backbone, tokenizer, prompts + prompts, a + b)
    phi = h @ projection(backbone.config.hidden_size, k, seed)
    return phi[:len(a)], phi[len(a):]


def truth(kind: str, phi_a, phi_b, seed: int) -> torch.Tensor:
    """A parameter whose logits wᵀz have standard deviation 1.5 on these pairs (informative, not certain)."""
    z = pair_features(kind, phi_a, phi_b)
    w = torch.randn(z.shape[1], generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return 1.5 * w / (z @ w).std()


@pytest.mark.parametrize("kind,k", [("bt-linear", 6), ("skew-bilinear", 4)])
def test_recovery_as_the_data_grows(tiny_dir, kind, k):
    prompts, a, b = texts(4000, seed=0)
    phi_a, phi_b = features(tiny_dir, prompts, a, b, k, seed=0)
    w = truth(kind, phi_a, phi_b, seed=1)
    z = pair_features(kind, phi_a, phi_b)
    labels = (torch.rand(len(a), generator=torch.Generator().manual_seed(2), dtype=DTYPE)
              < torch.sigmoid(z @ w)).to(DTYPE)
    errors = []
    for n in (250, 1000, 4000):
        fit = fit_linear_model(kind, phi_a[:n], phi_b[:n], labels[:n], 1e-6, torch.eye(k, dtype=DTYPE))
        delta = fit.w - w
        p = torch.sigmoid(z[:n] @ fit.w)
        H = (z[:n] * (p * (1 - p)).unsqueeze(-1)).T @ z[:n]            # observed Fisher information
        # asymptotically (ŵ − w)ᵀH(ŵ − w) ~ χ²_D: below its 0.999 quantile for each n (a 1-in-1000 event)
        assert (delta @ H @ delta).item() <= chi2.ppf(0.999, df=w.numel())
        # Σ is λI + Σ z zᵀ
        sigma = 1e-6 * torch.eye(w.numel(), dtype=DTYPE) + z[:n].T @ z[:n]
        assert torch.allclose(fit.sigma, sigma, rtol=0, atol=tolerance(DTYPE, scale=sigma.abs().max().item(),
                                                                        length=n))
        errors.append(delta.norm().item())
    # error ∝ 1/√n: 16× the data should cut it by ~4; ask for 2 (and monotone)
    assert errors[2] <= errors[1] <= errors[0] and errors[2] <= errors[0] / 2


def test_fit_preference_writes_sigma_and_the_linear_oracle_reads_it(tiny_dir, tmp_path):
    prompts, a, b = texts(300, seed=3)
    k, kind = 4, "skew-bilinear"
    phi_a, phi_b = features(tiny_dir, prompts, a, b, k, seed=5)
    w = truth(kind, phi_a, phi_b, seed=4)
    labels = torch.sigmoid(pair_features(kind, phi_a, phi_b) @ w)       # soft labels: P itself
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "a": x, "b": y, "label": float(v)}) + "\n"
                            for p, x, y, v in zip(prompts, a, b, labels)), encoding="utf-8")
    out = tmp_path / "fit"
    code = main(["fit-preference", "--data", str(data), "--base", str(tiny_dir / "policy"), "--out", str(out),
                 "--model", kind, "--feature-dim", str(k), "--seed", "5", "--validation", "0", "--ridge", "1e-6"])
    assert code == 0
    model, base = load_linear(out)
    z = pair_features(kind, phi_a, phi_b)
    sigma = 1e-6 * torch.eye(w.numel(), dtype=DTYPE) + z.T @ z
    assert torch.allclose(model.sigma, sigma, rtol=0, atol=tolerance(DTYPE, scale=sigma.abs().max().item(),
                                                                     length=300))
    # labels y = σ(wᵀz) exactly make w the unpenalised MLE (Σ z(σ(wᵀz) − y) = 0); the ridge moves it by
    # −λH⁻¹w to first order
    p = torch.sigmoid(z @ w)
    shift = 1e-6 * torch.linalg.solve((z * (p * (1 - p)).unsqueeze(-1)).T @ z, w).norm().item()
    assert (model.w - w).norm().item() <= 2 * shift + tolerance(DTYPE, scale=w.norm().item(), length=300)
    assert torch.equal(model.matrix(), -model.matrix().T)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0]["train_loss_after"] == pytest.approx(0.6931471805599453)
    assert rows[1]["parameters"] == k * (k - 1) // 2 and rows[1]["train_loss_after"] < rows[0]["train_loss_after"]
    oracle = load_text_oracle(f"linear:{out}", device="cpu")
    p = oracle(prompts[:20], a[:20], b[:20])
    want = torch.sigmoid(pair_features(kind, phi_a[:20], phi_b[:20]) @ model.w).float()
    assert torch.allclose(p, want, rtol=0, atol=tolerance("float32", length=64))
    assert torch.allclose(p + oracle(prompts[:20], b[:20], a[:20]), torch.ones(20), rtol=0,
                          atol=tolerance("float32"))


def test_bad_linear_inputs(tiny_dir, tmp_path):
    with pytest.raises(NashprefError, match="not a fit-preference"):
        load_text_oracle(f"linear:{tmp_path}")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "a": "x", "b": "y", "label": 1.0}) + "\n", encoding="utf-8")
    with pytest.raises(NashprefError, match="--model"):
        run_fit_preference(FitPreferenceConfig(data=str(data), base=str(tiny_dir / "policy"), out=tmp_path / "o",
                                               model="trees"))
    with pytest.raises(NashprefError, match="--ridge"):
        run_fit_preference(FitPreferenceConfig(data=str(data), base=str(tiny_dir / "policy"), out=tmp_path / "o",
                                               model="bt-linear", ridge=0.0))
    assert not (tmp_path / "o").exists()


def test_theory_enhance_picks_responses_by_rejection_sampling(tiny_dir, tmp_path):
    """`nashpref theory enhance` on a bt-linear fit: its weights are the empirical enhancer recomputed here from the
    features, its acceptance probabilities q/max q, the kept texts those accepted, and the uncertainty grows."""
    from nashpref.theory.rejection import empirical_enhancer

    prompts, a, b = texts(200, seed=6)
    k, kind = 4, "bt-linear"
    phi_a, phi_b = features(tiny_dir, prompts, a, b, k, seed=0)
    w = truth(kind, phi_a, phi_b, seed=7)
    labels = torch.sigmoid(pair_features(kind, phi_a, phi_b) @ w)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "a": x, "b": y, "label": float(v)}) + "\n"
                            for p, x, y, v in zip(prompts, a, b, labels)), encoding="utf-8")
    fit = tmp_path / "fit"
    assert main(["fit-preference", "--data", str(data), "--base", str(tiny_dir / "policy"), "--out", str(fit),
                 "--model", kind, "--feature-dim", str(k), "--validation", "0"]) == 0
    draws = tmp_path / "draws.jsonl"
    rows = [{"prompt": prompts[i], "responses": a[8 * i:8 * i + 8]} for i in range(3)]
    draws.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "enhanced"
    assert main(["theory", "enhance", "--linear", str(fit), "--responses", str(draws), "--budget", "0.3",
                 "--out", str(out)]) == 0
    model, _ = load_linear(fit)
    backbone, tokenizer = load_backbone(str(tiny_dir / "policy"), "cpu", "float32")
    for row, got in zip(rows, read_jsonl(out / "enhancer.jsonl")):
        phi = (embed(backbone, tokenizer, [row["prompt"]] * 8, row["responses"]) @ model.projection).unsqueeze(0)
        q = empirical_enhancer(phi, model.sigma, 0.3)[0]
        weights = torch.tensor(got["weights"], dtype=DTYPE)
        assert torch.equal(weights, q)              # the same features, the same computation
        assert got["accept"] == (weights / weights.max()).tolist()
        assert set(got["enhancer"]) <= set(row["responses"]) and got["width_enhancer"] >= got["width_main"]
    summary = json.loads((out / "results.json").read_text())
    assert summary["prompts"] == 3 and summary["draws"] == 24 and summary["mean_width_gain"] > 0
    with pytest.raises(NashprefError, match="non-empty list"):
        draws.write_text(json.dumps({"prompt": "p", "responses": []}) + "\n", encoding="utf-8")
        from nashpref.cli.theory import Enhance, run_enhance
        run_enhance(Enhance(linear=str(fit), responses=str(draws), out=tmp_path / "x"))
