"""``nashpref bench llm --preset pairwise``: the open-ended race, under a learned general pairwise preference.

No equilibrium is known here. The oracle is a pairwise classifier on the tiny model (``pairwise:DIR``, the
``PairwiseOracle`` of ``nashpref.preferences.pairwise``): the setup's policy with a fresh one-logit head, fitted by
``nashpref fit-preference`` to ORACLE_ROWS labelled pairs of grammar responses in every style and quality. The labels
are the ``rule:raters`` probabilities (three raters whose majority over styles is a cycle, plus a quality term), so
the classifier learns an intransitive preference that is not a function of one reward, and the solvers train
against the classifier, not the rule. Per iteration every solver's held-out responses (prompts never trained on)
are compared with μ's under that classifier: the win-rate against μ, with KL(π‖μ) and training seconds.

The report also gives the classifier's fit (validation loss and accuracy against the rule's labels) and its
style-level matrix (mean P over fixed sets of on-topic well-formed responses per style), which shows whether it
learnt the cycle.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import asdict
from pathlib import Path


from nashpref.benchmarks.llm.config import LLMBenchConfig
from nashpref.benchmarks.llm.race import PAIRWISE_SHARES, build_race_setup, resolve_race_budget, train_race
from nashpref.benchmarks.llm.runs import start_output
from nashpref.benchmarks.llm.setup import random_prompt, styled_response
from nashpref.benchmarks.stats import format_ci
from nashpref.errors import BadInput
from nashpref.io import atomic_write, write_jsonl

ORACLE_ROWS = 3000
ORACLE_FIT = {"epochs": 3, "lr": 1e-3, "batch_size": 32, "max_length": 256}
ORACLE_VERSION = 1
STYLE_SET = 12              # responses per style in the style-level matrix


def grammar_response(prompt: str, rng: random.Random) -> str:
    """A response of a uniformly drawn style; on topic or not, well formed or not (the raters' quality)."""
    from nashpref.lm.tiny import NOUNS
    from nashpref.preferences.rule import STYLES, prompt_noun

    noun = prompt_noun(prompt) if rng.random() < 0.5 else rng.choice(NOUNS)
    text = styled_response(noun, rng.choice(STYLES), rng)
    if rng.random() < 0.3:                  # drop the last word (and the full stop): not well formed
        text = text.rsplit(" ", 1)[0]
    return text


def oracle_rows(count: int, seed: int) -> list[dict]:
    """``count`` (prompt, a, b, label) rows, label = rule:raters P(a ≻ b)."""
    from nashpref.preferences.rule import raters_rule

    rng = random.Random(seed + 11)
    rows = []
    for _ in range(count):
        prompt = random_prompt(rng)
        a, b = grammar_response(prompt, rng), grammar_response(prompt, rng)
        rows.append({"prompt": prompt, "a": a, "b": b, "label": raters_rule(prompt, a, b)})
    return rows


def build_oracle(setup: Path, out: Path, seed: int, rows: int | None = None) -> Path:
    """out/oracle: the pairwise classifier fitted on ``rows`` (default ORACLE_ROWS) labelled pairs; reused when
    a finished one of the same version, seed and size is there."""
    from nashpref.preferences.fit import FitPreferenceConfig, run_fit_preference

    rows = rows or ORACLE_ROWS
    oracle, data = out / "oracle", out / "oracle-rows.jsonl"
    stamp = {"version": ORACLE_VERSION, "seed": seed, "rows": rows, "fit": ORACLE_FIT}
    try:
        if json.loads((oracle / "fit.json").read_text(encoding="utf-8")).get("stamp") == stamp:
            return oracle
    except (OSError, ValueError):
        pass
    if oracle.exists():
        import shutil

        shutil.rmtree(oracle)
    write_jsonl(data, oracle_rows(rows, seed))
    run_fit_preference(FitPreferenceConfig(data=str(data), base=str(setup / "policy"), out=oracle, seed=seed,
                                           device="cpu", dtype="float32", **ORACLE_FIT))
    fit = json.loads((oracle / "fit.json").read_text(encoding="utf-8"))
    atomic_write(oracle / "fit.json", json.dumps(fit | {"stamp": stamp}, indent=1) + "\n")
    return oracle


def style_matrix(oracle, seed: int) -> list[list[float]]:
    """M[k][l] = mean P(a ≻ b) over a fixed set of on-topic well-formed responses of style k and one of style l
    to one prompt. M + Mᵀ = 1 and the diagonal is ½ for any antisymmetric oracle; a cycle shows as M[0][1],
    M[1][2], M[2][0] all above ½."""
    from nashpref.preferences.rule import STYLES, prompt_noun

    rng = random.Random(seed + 13)
    prompt = random_prompt(rng)
    sets = [[styled_response(prompt_noun(prompt), s, rng) for _ in range(STYLE_SET)] for s in STYLES]
    matrix = []
    for a_set in sets:
        row = []
        for b_set in sets:
            a = [x for x in a_set for _ in b_set]
            b = [y for _ in a_set for y in b_set]
            row.append(oracle.prefer_texts([prompt] * len(a), a, b).double().mean().item())
        matrix.append(row)
    return matrix


def run_pairwise(config: LLMBenchConfig, command: str | None = None) -> Path:
    """Build or reuse the setup and the classifier, run every method and seed, write the report."""
    from nashpref.benchmarks.llm.report import machine
    from nashpref.preferences import load_text_oracle

    if config.size != "tiny":
        raise BadInput(f"--size {config.size}: the pairwise preset runs the tiny model")
    if config.sampler == "vllm":
        raise BadInput("--sampler vllm: the pairwise preset samples with transformers")
    budget = resolve_race_budget(config)
    started, load_before, date = start_output(config)
    out = config.out
    setup = build_race_setup(config, PAIRWISE_SHARES)
    oracle_dir = build_oracle(setup, out, config.setup_seed)
    fit_seconds = time.perf_counter() - started
    spec = f"pairwise:{oracle_dir}"
    runs, reused = train_race(config, budget, setup, "hf", None, spec)
    fit = json.loads((oracle_dir / "fit.json").read_text(encoding="utf-8"))
    meta = {"command": command or "nashpref bench llm --preset pairwise", "date": date, "load_before": load_before,
            "seconds": time.perf_counter() - started, "oracle_seconds": fit_seconds, "sampler": "hf",
            "machine": machine(), "reused_runs": reused}
    results = {"meta": meta, "preset": config.preset, "oracle": spec, "tau": config.tau,
               "methods": list(config.methods), "seeds": list(config.seeds), "budget": asdict(budget),
               "setup": json.loads((setup / "setup.json").read_text(encoding="utf-8")),
               "oracle_fit": {"rows": fit["train_rows"] + fit["validation_rows"], "config": ORACLE_FIT,
                              "labels": "rule:raters", "final": fit["final"]},
               "oracle_styles": style_matrix(load_text_oracle(spec), config.setup_seed),
               "runs": {m: {str(s): runs[f"{m}/seed-{s}"] for s in config.seeds} for m in config.methods}}
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    plot_win_rates(results, out / "win-rate.png")
    atomic_write(out / "README.md", pairwise_markdown(results))
    return out / "README.md"


def pairwise_markdown(results: dict) -> str:
    meta, budget, fit = results["meta"], results["budget"], results["oracle_fit"]
    final = fit["final"]
    m = results["oracle_styles"]
    lines = ["# Open-ended LLM race: every solver under a learned pairwise preference", "",
             f"`{meta['command']}` — {meta['date']}, {meta['seconds'] / 60:.1f} min (the classifier: "
             f"{meta['oracle_seconds'] / 60:.1f} min; load average {meta['load_before']:.1f} before)"
             + (f"; {len(meta['reused_runs'])} runs reused" if meta["reused_runs"] else "") + ".", "",
             f"Oracle: a pairwise classifier (the tiny Llama with a one-logit head, read in both orders) fitted for "
             f"{fit['config']['epochs']} epochs on {fit['rows']} pairs of grammar responses labelled with "
             f"`{fit['labels']}` probabilities; validation loss {final.get('validation_loss', float('nan')):.3f} "
             f"(log 2 = 0.693 for a model that learnt nothing), validation accuracy "
             f"{final.get('validation_accuracy', float('nan')):.2f}. No equilibrium is known; the table and plot "
             "give what can be measured: the held-out win-rate against μ under the classifier.", "",
             "Its style-level preferences (mean P(row ≻ column) over fixed on-topic well-formed responses): "
             f"P(warm ≻ cold) = {m[0][1]:.2f}, P(cold ≻ plain) = {m[1][2]:.2f}, P(plain ≻ warm) = {m[2][0]:.2f}"
             + (" — a cycle." if min(m[0][1], m[1][2], m[2][0]) > 0.5 else "."), "",
             f"Budget per run: {budget['iterations']} iterations, {budget['samples']} responses per training prompt, "
             f"AdamW lr {budget['lr']:g} × {budget['lr_decay']:.4g} per iteration, ≤ {budget['max_new_tokens']} "
             f"new tokens, every solver at its default options; seeds {results['seeds']}; after every iteration "
             f"{budget['heldout']} held-out prompts × {budget['eval_samples']} responses.", "",
             "| method | final win-rate vs μ | best win-rate vs μ on the way | KL(π‖μ) | s / iteration |",
             "|---|---|---|---|---|"]
    for method in results["methods"]:
        runs = [results["runs"][method][str(s)] for s in results["seeds"]]
        lines.append(f"| {method} | {format_ci([r[-1]['win_rate_vs_reference'] for r in runs])} | "
                     f"{format_ci([max(x['win_rate_vs_reference'] for x in r) for r in runs])} | "
                     f"{format_ci([r[-1]['kl'] for r in runs], 2)} | "
                     f"{sum(r[-1]['seconds'] / r[-1]['iteration'] for r in runs) / len(runs):.2f} |")
    lines += ["", "![win-rate vs μ per iteration](win-rate.png)", "",
              "*win-rate vs μ*: the classifier's mean P(π's response ≻ μ's response) over all pairs per held-out "
              "prompt; ½ is a tie. *s / iteration*: training seconds (sampling, judging, the step), evaluation "
              "excluded, on a machine shared with other work."]
    return "\n".join(lines) + "\n"


def plot_win_rates(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nashpref.benchmarks.llm.race_report import PALETTE

    figure = Figure(figsize=(9, 5.5), layout="constrained")
    ax = figure.subplots()
    for i, method in enumerate(results["methods"]):
        runs = [results["runs"][method][str(s)] for s in results["seeds"]]
        steps = [0] + [r["iteration"] for r in runs[0]]
        means = [0.5] + [sum(rows[t]["win_rate_vs_reference"] for rows in runs) / len(runs)
                         for t in range(len(runs[0]))]
        dpo = method == "iterative-dpo"
        ax.plot(steps, means, "--" if dpo else "-", color=PALETTE[i % len(PALETTE)], label=method,
                lw=2.5 if dpo else 1.5)
    ax.axhline(0.5, color="gray", ls=":", label="μ (tie)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out win-rate vs μ (learned pairwise classifier)")
    ax.set_title(f"open-ended race: win-rate vs μ per iteration (mean over {len(results['seeds'])} seed(s))")
    ax.legend(fontsize=8, ncols=2)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    atomic_write(path, buffer.getvalue())
