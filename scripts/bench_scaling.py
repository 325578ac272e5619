"""1 vs 2 CPU ranks (one thread each) with the FSDP2 backend on the benchmark's "small" Llama: per-rank bytes of
parameters + gradients + optimizer state, peak RSS, and wall time per training iteration on the same global batch.

    python scripts/bench_scaling.py --out bench/scaling [--steps 12] [--rows 32] [--width 96]

Each configuration runs under ``torchrun --standalone --nproc_per_node N`` with OMP_NUM_THREADS=1; the two run
one after the other in this one invocation. One iteration = forward + backward of the global batch's mean
next-token loss (each rank its contiguous share of rows) + clipped AdamW step, as the trainer's step does.
The first two iterations are warm-up; medians over the rest. Writes OUT/results.json and OUT/README.md.

Besides wall time, each rank's CPU time per iteration (time.process_time: all its threads, gloo's included) and
the time one profiled extra step spends in collectives: on a machine whose cores other jobs share, wall time
measures the contention more than the ranks, and CPU time is what the iteration costs each rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=768, vocab_size=1024)


def worker(args) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nashpref.lm.backend.fsdp import FSDPBackend

    backend = FSDPBackend(device="cpu", timeout=600)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=256, tie_word_embeddings=False, **SMALL))
    backend.prepare(model, None)
    optimizer = backend.make_optimizer(model.parameters(), lr=1e-4, weight_decay=0.0)
    tokens = torch.randint(0, SMALL["vocab_size"], (args.rows, args.width),
                           generator=torch.Generator().manual_seed(1))
    mine = backend.shard(tokens)
    seconds, cpu, compute = [], [], []
    for _ in range(args.steps):
        backend.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autograd.profiler.record_function("step"):
            logits = model(input_ids=mine).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), mine[:, 1:].reshape(-1))
            backend.backward(loss * mine.shape[0] / args.rows * backend.world_size)
            backend.step(optimizer, 1.0)
        backend.barrier()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # Where the time goes: one more step under the profiler, split into collectives (gloo) and the rest.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits = model(input_ids=mine).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), mine[:, 1:].reshape(-1))
        backend.backward(loss * mine.shape[0] / args.rows * backend.world_size)
        backend.step(optimizer, 1.0)
    comm = sum(e.self_cpu_time_total for e in prof.key_averages()
               if any(k in e.key for k in ("c10d::", "gloo", "all_gather", "reduce_scatter", "allreduce",
                                           "all_reduce", "wait"))) / 1e6
    compute.append({"profiled_total_s": sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6,
                    "profiled_collectives_s": comm})

    def local_bytes(tensors) -> int:
        return sum((t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size() for t in tensors)

    params = list(model.parameters())
    optimizer_tensors = [v for state in optimizer.state.values() for v in state.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0]
    # Gradients are freed by zero_grad(set_to_none=True); their shards have the parameters' shapes.
    row = {"rank": backend.rank, "world": backend.world_size, "param_bytes": local_bytes(params),
           "grad_bytes": local_bytes(params), "optimizer_bytes": local_bytes(optimizer_tensors),
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "step_seconds": seconds, "step_cpu_seconds": cpu, "profile": compute[0],
           "full_params": sum(p.numel() for p in params)}
    rows = backend.gather([row])
    if backend.is_main:
        Path(args.result).write_text(json.dumps(rows))
    backend.close()


def run(nproc: int, args, out: Path) -> list[dict]:
    result = out / f".ranks-{nproc}.json"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, "--worker", "--result", str(result), "--steps", str(args.steps), "--rows",
               str(args.rows), "--width", str(args.width)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    rows = json.loads(result.read_text())
    result.unlink()
    return rows


def summarize(rows: list[dict]) -> dict:
    state = max(r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"] for r in rows)
    medians = [statistics.median(r["step_seconds"][2:]) for r in rows]
    return {"world": rows[0]["world"], "params": rows[0]["full_params"],
            "state_bytes_per_rank": state, "peak_rss_bytes_per_rank": max(r["peak_rss_bytes"] for r in rows),
            "median_iteration_seconds": max(medians),
            "fastest_iteration_seconds": max(min(r["step_seconds"][2:]) for r in rows),
            "median_iteration_cpu_seconds": max(statistics.median(r["step_cpu_seconds"][2:]) for r in rows),
            "profiled_collectives_seconds": max(r["profile"]["profiled_collectives_s"] for r in rows),
            "ranks": rows}


def combine(repeats: list[dict]) -> dict:
    """The median over repeated runs of every timing; sizes from the first run; each run kept."""
    out = dict(repeats[0]) | {"repeats": repeats}
    out.pop("ranks")
    for key in ("median_iteration_seconds", "fastest_iteration_seconds", "median_iteration_cpu_seconds",
                "profiled_collectives_seconds"):
        out[key] = statistics.median(r[key] for r in repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scaling")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=1, help="alternate 1- and 2-rank runs this many times")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.steps < 3 or args.rows < 2 or args.width < 2:
        print("error: --steps must be >= 3 and --rows, --width >= 2", file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    load, runs = [os.getloadavg()[0]], {1: [], 2: []}
    for _ in range(args.repeats):           # 1, 2, 1, 2, …: a drifting load hits both alike
        for nproc in (1, 2):
            runs[nproc].append(summarize(run(nproc, args, args.out)))
            load.append(os.getloadavg()[0])
    one, two = combine(runs[1]), combine(runs[2])
    ratios = {key: two[name] / one[name] for key, name in
              (("state_bytes", "state_bytes_per_rank"), ("peak_rss", "peak_rss_bytes_per_rank"),
               ("iteration_seconds", "median_iteration_seconds"),
               ("fastest_iteration", "fastest_iteration_seconds"),
               ("iteration_cpu_seconds", "median_iteration_cpu_seconds"))}
    command = f"python scripts/bench_scaling.py --out {args.out} --steps {args.steps} --rows {args.rows} " \
              f"--width {args.width} --repeats {args.repeats}"
    results = {"command": command, "settings": {k: getattr(args, k) for k in ("steps", "rows", "width", "repeats")},
               "load_average": load, "cores": os.cpu_count(), "one_rank": one, "two_ranks": two,
               "ratio_two_over_one": ratios, "targets": {"state_bytes": 0.6, "iteration_seconds": 0.75}}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = report(results)
    (args.out / "README.md").write_text(text)
    print(text)


def report(results: dict) -> str:
    one, two, ratios, setting = (results["one_rank"], results["two_ranks"], results["ratio_two_over_one"],
                                 results["settings"])
    mib = 1 / 2**20
    lines = ["# 1 vs 2 CPU ranks, FSDP2 (gloo), one thread each", "", f"Command: `{results['command']}`", "",
             f"Model: the benchmark's small Llama ({one['params'] / 1e6:.2f} M parameters, fp32); global batch "
             f"{setting['rows']} × {setting['width']} tokens; {setting['steps']} iterations, medians over the last "
             f"{setting['steps'] - 2}; {setting['repeats']} alternating run(s) of each, and the median over those.",
             "", "| per rank | 1 rank | 2 ranks | ratio | target |", "|---|---|---|---|---|",
             f"| params + grads + AdamW state (MiB) | {one['state_bytes_per_rank'] * mib:.1f} | "
             f"{two['state_bytes_per_rank'] * mib:.1f} | {ratios['state_bytes']:.3f} | <= 0.6 |",
             f"| peak RSS (MiB) | {one['peak_rss_bytes_per_rank'] * mib:.0f} | "
             f"{two['peak_rss_bytes_per_rank'] * mib:.0f} | {ratios['peak_rss']:.3f} | |",
             f"| iteration (s, median) | {one['median_iteration_seconds']:.3f} | "
             f"{two['median_iteration_seconds']:.3f} | {ratios['iteration_seconds']:.3f} | <= 0.75 |",
             f"| iteration (s, fastest) | {one['fastest_iteration_seconds']:.3f} | "
             f"{two['fastest_iteration_seconds']:.3f} | {ratios['fastest_iteration']:.3f} | |",
             f"| iteration CPU time (s, median, all threads of the rank) | {one['median_iteration_cpu_seconds']:.3f} | "
             f"{two['median_iteration_cpu_seconds']:.3f} | {ratios['iteration_cpu_seconds']:.3f} | |",
             f"| in collectives, profiled step (s) | {one['profiled_collectives_seconds']:.3f} | "
             f"{two['profiled_collectives_seconds']:.3f} | | |", "",
             f"Load average (1 min) before the first run and after each: "
             f"{', '.join(f'{x:.1f}' for x in results['load_average'])} on {results['cores']} cores.", "",
             "Median iteration of each run (s): 1 rank "
             + ", ".join(f"{r['median_iteration_seconds']:.3f}" for r in one["repeats"]) + "; 2 ranks "
             + ", ".join(f"{r['median_iteration_seconds']:.3f}" for r in two["repeats"]) + ".", "",
             "Peak RSS includes the Python interpreter, torch and transformers (about the same in every process), "
             "so its ratio is far above the state ratio on a model this small.", "",
             "CPU time is what an iteration costs a rank (all its threads): half the compute plus the gloo "
             "collectives. With a free core per rank, the wall-time ratio would come near the CPU-time ratio. On "
             "a machine whose cores other jobs share, wall time mostly measures how often both ranks are scheduled "
             "at once, since every collective waits for the slower one.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
