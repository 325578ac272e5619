"""The report of ``nashpref bench llm``: per-method summaries over seeds, the markdown and the four-panel plot."""

from __future__ import annotations

import math
import os
import platform
import statistics
from pathlib import Path
from typing import IO

import torch

from nashpref.benchmarks.llm.config import Budget, LLMBenchConfig
from nashpref.benchmarks.stats import format_ci, mean_ci

ORACLE = "rule:raters"
BASELINE = "iterative-dpo"
TIME_PARTS = ("sampling", "judging", "training", "sync")


# ---- summary ---------------------------------------------------------------------------------------------------
METRICS = ("win_rate_vs_baseline", "win_rate_vs_reference", "exploitability_responses", "exploitability_policies",
           "class_gap", "kl_to_reference", "well_formed", "on_topic")


def summarise(config: LLMBenchConfig, rows: dict, evaluation: dict) -> dict:
    """Per method: each metric per seed, and the time per iteration split (medians over iterations ≥ 2)."""
    summary = {}
    for method in config.methods:
        per_seed = [evaluation["stats"][f"{method}/seed-{s}"] for s in config.seeds]
        entry = {metric: [row[metric] for row in per_seed if metric in row] for metric in METRICS}
        entry["styles"] = {s: [row["styles"][s] for row in per_seed] for s in ("warm", "cold", "plain")}
        iterations = [r for s in config.seeds for r in rows[(method, s)] if r["iteration"] > 1] or \
            [r for s in config.seeds for r in rows[(method, s)]]
        entry["seconds_per_iteration"] = {part: statistics.median(r[f"{part}_seconds"] for r in iterations)
                                          for part in TIME_PARTS}
        entry["seconds_per_iteration"]["total"] = statistics.median(
            sum(r[f"{part}_seconds"] for part in TIME_PARTS) for r in iterations)
        entry["queries_per_iteration"] = statistics.median(r["pairs"] for r in iterations)
        entry["samples_per_iteration"] = statistics.median(r["samples"] for r in iterations)
        entry["queries_per_run"] = statistics.median(rows[(method, s)][-1]["queries"] for s in config.seeds)
        summary[method] = entry
    return summary


def machine() -> dict:
    import numpy
    import transformers

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import vllm
        info["vllm"] = vllm.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def report(config: LLMBenchConfig, budget: Budget, meta: dict, summary: dict, evaluation: dict,
           setup_info: dict) -> str:
    """The markdown report."""
    lines = ["# Language-model race against iterative DPO (ground-truth intransitive oracle)", "",
             f"`{meta['command']}` — {meta['date']}, {meta['seconds'] / 60:.1f} min in total "
             f"(load average {meta['load_before']:.1f} before), sampler {meta['sampler']}; the training runs' own "
             f"clocks add up to {meta['run_seconds'] / 60:.1f} min"
             + (f" ({len(meta['reused_runs'])} runs reused from an earlier invocation of the same command)"
                if meta["reused_runs"] else "") + ".", "",
             f"Machine: {', '.join(f'{k} {v}' for k, v in meta['machine'].items() if v is not None)}.", "",
             f"Setup (size `{config.size}`): a tiny Llama ({setup_info['model']['hidden']} hidden, "
             f"{setup_info['model']['layers']} layers) pre-trained on the tiny grammar by `make_tiny_model`, then "
             f"SFT'd for {setup_info['sft_steps']} steps on {setup_info['sft_dialogues']} styled dialogues (styles "
             f"{setup_info['style_shares_in_sft']}, {setup_info['off_topic_share_in_sft']:.0%} off-topic); "
             "μ's own scores are the first row of the table.", "",
             f"Oracle `{ORACLE}` (ground truth): three raters rank the styles warm > cold > plain, cold > plain > "
             "warm, plain > warm > cold; each votes σ(3 (u(a) − u(b))) with u = (2 − rank) + ½·quality, quality = ½ "
             "on topic + ½ well formed. Its majority over styles is a cycle (P(warm ≻ cold) = P(cold ≻ plain) = "
             "P(plain ≻ warm) = 0.636 at equal quality), so no Bradley–Terry reward can represent it.", "",
             f"Budget per run: {budget.iterations} iterations over {setup_info['train_prompts']} training prompts, "
             f"{budget.samples} responses per prompt, AdamW lr {budget.lr:g}, τ = {config.tau:g}, ≤ "
             f"{budget.max_new_tokens} new tokens, temperature 1, exact oracle probabilities, every solver at its "
             f"default options; seeds {list(config.seeds)}. Scored on {evaluation['prompts']} held-out prompts × "
             f"{budget.eval_samples} responses. Intervals: 95% Student-t over seeds.", "",
             "| method | win-rate vs iterative DPO | win-rate vs μ | exploitability (response pool) | "
             "exploitability (policy pool) | class-game gap | KL(π‖μ) | well formed | on topic | "
             "styles warm / cold / plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    reference = evaluation["stats"]["reference"]
    lines.append(f"| μ (reference) | – | 0.500 | {reference['exploitability_responses']:.3f} | "
                 f"{reference['exploitability_policies']:.3f} | {reference['class_gap']:.3f} | 0 | "
                 f"{reference['well_formed']:.2f} | {reference['on_topic']:.2f} | "
                 + " / ".join(f"{reference['styles'][s]:.2f}" for s in ("warm", "cold", "plain")) + " |")
    for method, entry in summary.items():
        vs_baseline = "–" if method == BASELINE else format_ci(entry["win_rate_vs_baseline"])
        styles = " / ".join(f"{mean_ci(entry['styles'][s])[0]:.2f}" for s in ("warm", "cold", "plain"))
        lines.append(f"| {method} | {vs_baseline} | {format_ci(entry['win_rate_vs_reference'])} | "
                     f"{format_ci(entry['exploitability_responses'])} | {format_ci(entry['exploitability_policies'])} "
                     f"| {format_ci(entry['class_gap'])} | {format_ci(entry['kl_to_reference'], 2)} | "
                     f"{format_ci(entry['well_formed'], 2)} | {format_ci(entry['on_topic'], 2)} | {styles} |")
    game = evaluation["class_game"]
    lines += ["", "The class game's equilibrium (τ-regularised, μ's class shares as reference): "
              + ", ".join(f"{c} {p:.2f}" for c, p in zip(game["classes"], game["equilibrium"]))
              + "; μ: " + ", ".join(f"{c} {p:.2f}" for c, p in zip(game["classes"], game["mu"])) + ".", "",
              "## Time per iteration (median over iterations 2…T and seeds)", "",
              "| method | sampling | judging | training | weight sync | total (median of the sums) | "
              "preference queries | samples | queries per run |",
              "|---|---|---|---|---|---|---|---|---|"]
    for method, entry in summary.items():
        t = entry["seconds_per_iteration"]
        lines.append(f"| {method} | " + " | ".join(f"{t[p]:.3f} s" for p in TIME_PARTS)
                     + f" | {t['total']:.3f} s | {entry['queries_per_iteration']:.0f} | "
                     f"{entry['samples_per_iteration']:.0f} | {entry['queries_per_run']:,.0f} |")
    lines += ["", "Every method sees the same prompts, the same number of responses per prompt and the same iterations; "
              "how many of those responses it pairs for the oracle, and how many extra responses it draws (EGPO's "
              "second round, Nash-MD's mixture), follow its own sampling scheme, so the query and sample counts "
              "differ by method and are listed per iteration and per run."]
    lines += ["", "![race](llm.png)", "", "## What the columns mean", "",
              "- *win-rate vs iterative DPO*: mean oracle P(method ≻ iterative DPO) over held-out prompts and all "
              "pairs of their responses, the two trained with the same seed; ½ is a tie.",
              "- *exploitability (response pool)*: max over candidate responses c of E_{y~π} P(c ≻ y) − ½ per prompt, "
              "averaged; the pool holds every policy's responses and one top-quality response per style, which "
              "contains the oracle's exact best response (it reads only style and quality). 0 is unexploitable; "
              "a policy that always answers in one style is exploitable by ≈ 0.14.",
              "- *exploitability (policy pool)*: the same with whole candidate policies (μ and every final policy).",
              "- *class-game gap*: the exact τ-regularised duality gap of π's shares of (style, quality) classes in "
              "the reduced game; 0 at the equilibrium of the τ-regularised LM game.",
              "- *KL(π‖μ)*: per-token exact KL summed over the response, averaged over π's responses.",
              "", "## Example responses to the first held-out prompt", "",
              f"Prompt: `{evaluation['example_prompt']}`", ""]
    for name, rows in evaluation["examples"].items():
        if name == "reference" or name.endswith(f"seed-{config.seeds[0]}"):
            lines.append(f"- {name}: " + " · ".join(f"`{r}`" for r in rows))
    return "\n".join(lines) + "\n"


def plot(summary: dict, evaluation: dict, path: Path | IO) -> None:
    """Four panels: win-rates, exploitability, style shares, time per iteration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(summary)
    x = range(len(methods))
    figure = Figure(figsize=(14, 9), layout="constrained")
    axes = figure.subplots(2, 2)

    def bars(ax, metric, offset, width, label, color):
        stats = [mean_ci(summary[m].get(metric, [])) for m in methods]
        means = [0 if math.isnan(s[0]) else s[0] for s in stats]
        errors = [0 if math.isnan(s[1]) else s[1] for s in stats]
        ax.bar([i + offset for i in x], means, width, yerr=errors, capsize=3, label=label, color=color)

    ax = axes[0, 0]
    bars(ax, "win_rate_vs_baseline", -0.2, 0.4, "vs iterative DPO", "tab:blue")
    bars(ax, "win_rate_vs_reference", 0.2, 0.4, "vs μ", "tab:gray")
    ax.axhline(0.5, color="black", lw=0.8)
    ax.set_title("win-rate under the ground-truth oracle (95% CI over seeds)")
    ax.set_ylim(0.3, 0.7)
    ax.legend()
    ax = axes[0, 1]
    bars(ax, "exploitability_responses", -0.2, 0.4, "best response from the response pool", "tab:red")
    bars(ax, "class_gap", 0.2, 0.4, "τ-gap in the exact class game", "tab:orange")
    for metric, color in (("exploitability_responses", "tab:red"), ("class_gap", "tab:orange")):
        value = evaluation["stats"]["reference"][metric]
        ax.axhline(value, color=color, ls="--", lw=1, label=f"μ: {value:.3f}")
    ax.set_title("distance from equilibrium (lower is better)")
    ax.legend()
    ax = axes[1, 0]
    game = evaluation["class_game"]
    reference = evaluation["stats"]["reference"]["styles"]
    equilibrium = {s: sum(p for c, p in zip(game["classes"], game["equilibrium"]) if c.startswith(s + "/"))
                   for s in ("warm", "cold", "plain")}
    columns = methods + ["μ", "π* (class game)"]
    bottom = [0.0] * len(columns)
    for style, color in (("warm", "tab:orange"), ("cold", "tab:blue"), ("plain", "tab:gray")):
        shares = [mean_ci(summary[m]["styles"][style])[0] for m in methods] + [reference[style], equilibrium[style]]
        ax.bar(range(len(columns)), shares, 0.6, bottom=bottom, label=style, color=color)
        bottom = [b + v for b, v in zip(bottom, shares)]
    ax.set_title("style shares of the final policy (mean over seeds), μ and the equilibrium")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax = axes[1, 1]
    bottom = [0.0] * len(methods)
    for part, color in zip(TIME_PARTS, ("tab:green", "tab:purple", "tab:brown", "tab:pink")):
        values = [summary[m]["seconds_per_iteration"][part] for m in methods]
        ax.bar(list(x), values, 0.6, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title("seconds per iteration (median)")
    ax.legend()
    for ax in (axes[0, 0], axes[0, 1], axes[1, 1]):
        ax.set_xticks(list(x), methods, rotation=30, ha="right")
    FigureCanvasAgg(figure).print_png(path)


