#!/usr/bin/env python
"""Where the vLLM mixture engine spends a decode step on CPU: one ``generate`` of SEQUENCES mixture responses
(K = 4 per prompt, 64 tokens each, end tokens ignored) under cProfile, split into the two stacks' forward (and
within it the matrix products and the paged attention), sampling, and the rest of the engine step (scheduler,
input preparation, output processing). Prints one JSON object.

    python scripts/profile_vllm_mixture.py --size small [--compiled] [--sequences 32]
"""

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (label, cProfile function names, file they are in: "~" for C builtins, counted by their own time)
PARTS = (("engine step, all", ("step",), "llm_engine.py"),
         ("both stacks' forward", ("forward",), "vllm_mixture_model.py"),
         # vLLM's oneDNN GEMM; compiled code calls it through torch.ops._C, which cProfile names without the op
         ("  matrix products (oneDNN)", ("<built-in method torch._ops._C.onednn_mm>",
                                         "<built-in method torch._ops._C.>"), "~"),
         ("  paged attention + KV-cache write", ("<built-in method torch._ops._C.cpu_attention_with_kv_cache>",
                                                 "<built-in method torch._ops._C.cpu_attn_reshape_and_cache>"), "~"),
         ("mixed logits (compute_logits)", ("compute_logits",), "vllm_mixture_model.py"),
         ("sampling", ("sample_tokens",), "uniproc_executor.py"),
         ("scheduler", ("schedule",), "scheduler.py"))

def main() -> None:
    from nashpref.benchmarks.llm.setup import SIZES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--compiled", action="store_true", help="torch.compile instead of eager mode")
    args = parser.parse_args()
    if args.sequences < 4 or args.sequences % 4:
        print("error: --sequences must be a multiple of 4", file=sys.stderr)
        sys.exit(2)

    from vllm import SamplingParams

    from nashpref.benchmarks.llm.vllm_mixture import BETA, K, build
    from nashpref.lm.samplers.base import SamplingConfig
    from nashpref.lm.samplers.vllm_mixture import VLLMMixtureSampler

    with tempfile.TemporaryDirectory(prefix="nashpref-profile-mixture-") as root:
        path = build(args.size, Path(root))
        engine = VLLMMixtureSampler(str(path), SamplingConfig(max_new_tokens=64), seed=0, max_model_len=256,
                                    engine_kwargs={"enforce_eager": not args.compiled})
        engine.set_beta(BETA)
        rows = [[1 + (7 * i + j) % 200 for j in range(6 + i % 4)] for i in range(args.sequences // K)]

        def generate(seed: int) -> tuple[int, float]:
            params = [SamplingParams(n=K, temperature=1.0, max_tokens=64, ignore_eos=True, seed=seed + i * K,
                                     logprobs=0, detokenize=False) for i in range(len(rows))]
            start = time.process_time()
            outs = engine.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs), time.process_time() - start

        generate(0)                                             # warm-up
        tokens, cpu_seconds = generate(1)
        profile = cProfile.Profile()
        profile.enable()
        generate(2)
        profile.disable()
        engine.close()
    stats = pstats.Stats(profile).stats             # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    seconds = {label: sum(v[2 if where == "~" else 3] for (file, _, name), v in stats.items()
                          if name in names and file.endswith(where)) for label, names, where in PARTS}
    total = seconds["engine step, all"]
    forward = seconds["both stacks' forward"]
    seconds["  the rest of the forward (norms, rotary, activations, module calls)"] = (
        forward - seconds["  matrix products (oneDNN)"] - seconds["  paged attention + KV-cache write"])
    seconds["the rest of the step (input preparation, output processing)"] = total - forward - sum(
        seconds[k] for k in ("mixed logits (compute_logits)", "sampling", "scheduler"))
    print(json.dumps({"size": args.size, "sequences": args.sequences, "compiled": args.compiled,
                      "tokens_per_cpu_second_unprofiled": tokens / cpu_seconds, "profiled_seconds": total,
                      "share_of_engine_step": {k: round(v / total, 3) for k, v in seconds.items()},
                      "load": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
