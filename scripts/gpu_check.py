"""One-GPU check of `nashpref train`: every solver in bf16 with the transformers sampler and ``--backend fsdp`` at
world size 1, the sampler's tokens/s, the training step's tokens/s and MFU, and peak memory. Fits in about
8 minutes on one H200; needs torch, transformers, peft and accelerate (no vLLM, no hub: the models are built
here from a config with ``nashpref.lm.tiny``).

    python scripts/gpu_check.py --out bench/gpu                       # one GPU
    python scripts/gpu_check.py --device cpu --dry-run --out DIR      # the same path on a CPU, in seconds

The script starts itself under ``torchrun --standalone --nproc_per_node 1`` (or run it under torchrun
yourself). It writes OUT/results.json and OUT/README.md. Without a CUDA device, ``--device cuda`` (the default)
stops with one ``error:`` line and exit status 2.

* sampling: the policy (an ``LMPolicy``, bf16) draws ``samples`` responses to each of ``prompts`` prompts with
  transformers ``generate``; tokens/s = response tokens drawn / seconds.
* training step: a Llama-shaped model built from a config, sharded by the FSDP backend (fp32 master weights,
  bf16 compute, fp32 reduction), forward + backward of the next-token loss of a (batch, seq) token block + clipped
  AdamW step; medians of the timed steps after warm-up. FLOPs per step = 6 · (weights of the linear layers) ·
  tokens + 12 · layers · hidden · seq · tokens (attention, counted in full as in the PaLM paper's appendix B);
  ``flops_counted`` is torch's FlopCounterMode on a meta-device copy of the same step, which must agree.
  MFU = FLOPs per step / median seconds / the GPU's dense bf16 peak.
* solvers: ``run_train`` of each registered solver for ``iterations`` iterations; seconds per phase from its
  metrics rows, the final loss, and the peak memory of the run (torch.cuda.max_memory_allocated; on a CPU the
  process's peak RSS so far). A solver that fails is recorded with its error and the others still run; solvers
  left when the time budget is spent are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks (no sparsity), from the vendor's data sheets; the first name that matches wins.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H200", 989.4e12), ("H100", 989.4e12), ("H800", 989.4e12), ("A100", 312e12),
             ("L40S", 362e12), ("A10", 125e12))
FULL = dict(run_model=dict(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816, vocab=512,
                           max_positions=512),
            step_model=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
                            intermediate_size=5632, vocab_size=32000),
            batch=8, seq=1024, warmup=3, steps=5, iterations=2, samples=4, prompts_per_round=32,
            max_new_tokens=64, sample_prompts=32)
DRY = dict(run_model=dict(), step_model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=1, intermediate_size=128, vocab_size=512),
           batch=2, seq=32, warmup=1, steps=2, iterations=1, samples=2, prompts_per_round=4, max_new_tokens=8,
           sample_prompts=4, solvers=["sppo"])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="1 iteration of 1 solver on the tiny sizes")
    parser.add_argument("--solvers", nargs="*", help="default: every registered solver (dry run: sppo)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; solvers left after it are skipped")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from its name)")
    return parser.parse_args(argv)


def no_cuda_message() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return (f"error: no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}): this check "
            "needs one GPU; `--device cpu --dry-run` runs the same path on a CPU")


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.device == "cuda" and (message := no_cuda_message()):
        print(message, file=sys.stderr)
        return 2
    from nashpref.lm.backend.distributed import launched_by_torchrun

    if not launched_by_torchrun():          # start this script again as torchrun's one rank
        env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS":
                            os.environ.get("OMP_NUM_THREADS", "1" if args.device == "cpu" else "8")}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                   str(Path(__file__).resolve()), *argv]
        return subprocess.run(command, env=env).returncode
    os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_progress_bars()
    return check(args, argv)


def quiet_progress_bars() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:         # load_prompts says so itself when it is needed
        pass


def check(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from nashpref.lm.backend.fsdp import FSDPBackend
    from nashpref.lm.tiny import TinySizes, make_tiny_model

    started = time.perf_counter()
    plan = DRY if args.dry_run else FULL
    backend = FSDPBackend(device=args.device, timeout=300)
    out = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="nashpref-gpu-check-"))
    paths = make_tiny_model(work / "models", sizes=TinySizes(**plan["run_model"]), dialogues=400, policy_steps=0,
                            reward_steps=0)
    results: dict = {"command": "python scripts/gpu_check.py " + " ".join(argv), "environment": environment(),
                     "dry_run": args.dry_run, "run_model": dict(TinySizes(**plan["run_model"]).__dict__)}
    results["sampling"] = sampling(paths, plan, backend.device)
    results["train_step"] = train_step(backend, plan, args.peak_tflops)
    from nashpref.solvers import REGISTRY

    names = args.solvers or plan.get("solvers") or list(REGISTRY)
    results["solvers"] = {}
    for name in names:
        spent = time.perf_counter() - started
        done = [r["seconds"] for r in results["solvers"].values() if "seconds" in r]
        if done and spent + max(done) > args.budget:
            results["solvers"][name] = {"status": f"skipped: the {args.budget:.0f} s budget was spent"}
            continue
        results["solvers"][name] = solver_run(name, paths, plan, work / "runs", args.device)
    results["seconds_total"] = time.perf_counter() - started
    backend.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(report(results), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, r in results["solvers"].items() if r["status"].startswith("error")]
    print(f"wrote {out / 'results.json'} and {out / 'README.md'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def environment() -> dict:
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def peak_memory(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dtype_name(device) -> str:
    return "bfloat16" if device.type == "cuda" else "float32"


def sampling(paths: dict, plan: dict, device) -> dict:
    """Response tokens per second of the transformers sampler (one warm-up call, then one timed call)."""
    import torch

    from nashpref.lm.data import load_prompts
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig

    prompts = load_prompts(str(paths["prompts"]), "prompt", "train", plan["sample_prompts"])
    policy, reference = LMPolicy.from_pretrained(str(paths["policy"]), prompts, device=str(device),
                                                 dtype=dtype_name(device),
                                                 sampling=SamplingConfig(max_new_tokens=plan["max_new_tokens"]))
    del reference
    contexts = torch.arange(len(prompts))
    policy.sample(contexts[:2], 1, torch.Generator().manual_seed(0))
    reset_peak(device)
    start = time.perf_counter()
    drawn = policy.sample(contexts, plan["samples"], torch.Generator().manual_seed(1))
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = int(drawn.lengths.sum())
    row = {"prompts": len(prompts), "samples": plan["samples"], "max_new_tokens": plan["max_new_tokens"],
           "dtype": dtype_name(device), "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
           "peak_memory_bytes": peak_memory(device)}
    del policy, drawn
    return row


def linear_weights(config) -> int:
    """Weights of the linear layers of a Llama config (q, k, v, o, the gated MLP, the untied output head)."""
    h, layers, inner, vocab = (config.hidden_size, config.num_hidden_layers, config.intermediate_size,
                               config.vocab_size)
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return layers * (2 * h * h + 2 * h * kv + 3 * h * inner) + h * vocab


def step_flops(config, batch: int, seq: int) -> int:
    """Matmul FLOPs of forward + backward of a (batch, seq) block: 6 per linear weight per token, plus attention's
    QKᵀ and AV in full (4 · seq · hidden per token per layer forward, twice that backward)."""
    tokens = batch * seq
    return 6 * linear_weights(config) * tokens + 12 * config.num_hidden_layers * config.hidden_size * seq * tokens


def counted_flops(config, batch: int, seq: int) -> int:
    """FlopCounterMode's count of the same forward + backward on the meta device (no compute; attention runs as
    the math kernel, whose two batched matmuls it counts)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
        tokens = torch.zeros(batch, seq, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=tokens, labels=tokens).loss.backward()
    return int(counter.get_total_flops())


def peak_flops(explicit: float | None, device) -> float | None:
    import torch

    if explicit is not None:
        return explicit * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def train_step(backend, plan: dict, explicit_peak: float | None) -> dict:
    """Tokens/s and MFU of the FSDP backend's training step on a Llama-shaped model built from a config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    batch, seq, device = plan["batch"], plan["seq"], backend.device
    config = LlamaConfig(max_position_embeddings=seq, tie_word_embeddings=False, **plan["step_model"])
    flops, counted = step_flops(config, batch, seq), counted_flops(config, batch, seq)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    backend.prepare(model, None)
    optimizer = backend.make_optimizer(model.parameters(), lr=1e-5, weight_decay=0.0)
    tokens = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    reset_peak(device)
    seconds = []
    for _ in range(plan["warmup"] + plan["steps"]):
        synchronize(device)
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        backend.backward(loss)
        backend.step(optimizer, 1.0)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[plan["warmup"]:])
    peak = peak_flops(explicit_peak, device)
    row = {"model": plan["step_model"], "parameters": sum(p.numel() for p in model.parameters()), "batch": batch,
           "seq": seq, "flops_per_step": flops, "flops_counted": counted, "step_seconds": seconds,
           "median_seconds": median, "tokens_per_second": batch * seq / median,
           "achieved_tflops": flops / median / 1e12, "peak_tflops": None if peak is None else peak / 1e12,
           "mfu": None if peak is None else flops / median / peak, "loss": float(loss.detach()),
           "peak_memory_bytes": peak_memory(device)}
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def solver_run(name: str, paths: dict, plan: dict, runs: Path, device: str) -> dict:
    """``run_train`` of one solver; its seconds per phase, final loss and peak memory, or the error it raised."""
    import torch

    from nashpref.lm.config import TrainConfig
    from nashpref.lm.trainer import run_train

    config = TrainConfig(policy=str(paths["policy"]), preference=f"reward:{paths['reward']}",
                         prompts=str(paths["prompts"]), solver=name, out=runs / name, sampler="hf",
                         iterations=plan["iterations"], heldout=8, samples=plan["samples"],
                         prompts_per_round=plan["prompts_per_round"], eval_samples=2,
                         max_new_tokens=plan["max_new_tokens"], lr=1e-6, tau=0.1, backend="fsdp", timeout=300,
                         dtype="bfloat16" if device == "cuda" else "float32")
    target = torch.device(device)
    reset_peak(target)
    start = time.perf_counter()
    try:
        result = run_train(config, progress=False)
    except Exception as exc:        # recorded, so that one failing solver does not hide the others' numbers
        return {"status": f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    rows = result.rows
    phases = {key: sum(r[key] for r in rows) / len(rows) for key in
              ("sampling_seconds", "judging_seconds", "sync_seconds", "training_seconds", "evaluation_seconds")}
    loss = rows[-1].get("loss")
    finite = loss is not None and math.isfinite(loss)
    return {"status": "ok" if finite else f"error: final loss {loss}", "iterations": result.iterations,
            "seconds": seconds, "seconds_per_iteration": result.seconds / max(result.iterations, 1),
            "per_iteration": phases, "loss": loss, "samples": rows[-1]["samples"], "pairs": rows[-1]["pairs"],
            "peak_memory_bytes": peak_memory(target)}


def report(results: dict) -> str:
    env, step, draw = results["environment"], results["train_step"], results["sampling"]
    gib = 2 ** 30
    mfu = "n/a (unknown peak)" if step["mfu"] is None else f"{100 * step['mfu']:.1f} %"
    lines = [
        "# One-GPU check of `nashpref train`" + (" (CPU dry run)" if results["dry_run"] else ""), "",
        f"Command: `{results['command']}` ({results['seconds_total']:.0f} s in all).", "",
        f"Environment: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers "
        f"{env['transformers']}, Python {env['python']}; {env['date']}.", "",
        f"* Sampler (transformers `generate`, {draw['dtype']}): {draw['prompts']} prompts × {draw['samples']} "
        f"samples × ≤ {draw['max_new_tokens']} tokens: {draw['tokens']} tokens in {draw['seconds']:.2f} s = "
        f"**{draw['tokens_per_second']:.0f} tokens/s**; peak memory {draw['peak_memory_bytes'] / gib:.2f} GiB.",
        f"* Training step (`--backend fsdp`, world size 1, {step['parameters'] / 1e6:.3g} M parameters, "
        f"{step['batch']} × {step['seq']} tokens): median {step['median_seconds']:.3f} s = "
        f"**{step['tokens_per_second']:.0f} tokens/s**, {step['achieved_tflops']:.1f} TFLOP/s, **MFU {mfu}**; "
        f"peak memory {step['peak_memory_bytes'] / gib:.2f} GiB. FLOPs per step {step['flops_per_step']:.3e} "
        f"(FlopCounterMode: {step['flops_counted']:.3e}).", "",
        "| solver | status | iterations | s / iteration | sampling | judging | training | evaluation | loss "
        "| peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["solvers"].items():
        if "iterations" not in row:
            lines.append(f"| {name} | {row['status']} | | | | | | | | |")
            continue
        p = row["per_iteration"]
        lines.append(f"| {name} | {row['status']} | {row['iterations']} | {row['seconds_per_iteration']:.2f} | "
                     f"{p['sampling_seconds']:.2f} | {p['judging_seconds']:.2f} | {p['training_seconds']:.2f} | "
                     f"{p['evaluation_seconds']:.2f} | {row['loss']:.4g} | {row['peak_memory_bytes'] / gib:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
