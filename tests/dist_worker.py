"""Scenarios run under ``torchrun`` by tests/test_fsdp_backend.py (each rank writes what it saw under OUT).

    torchrun --nproc_per_node N tests/dist_worker.py SCENARIO OUT [CHECKPOINT]

* ``collectives`` — shard / reduce / gather results per rank;
* ``train`` — FSDP2 (or DDP with BACKEND=ddp) on a small random Llama: two AdamW steps on a fixed global batch,
  each rank back-propagating the mean loss over its share; saves a DCP checkpoint after step 1 and the full
  weights after each step;
* ``resume`` — loads that checkpoint (any world size), checks it, takes step 2 and saves the full weights;
* ``prompts`` — ``load_prompts(SPEC, COLUMN, SPLIT)`` (arguments 3-5) on every rank: the list, or the error line;
* ``lora`` — LoRA under FSDP on the tiny model (arguments 3-4 as for ``solvers``): what the reference and the
  sampler's copy share, their log-probs with the adapters on and off (OUT/lora-rankR.json), then ``run_train``
  of SPPO and Nash-MD with ``lora_rank=4`` for 2 iterations into OUT/<solver>;
* ``vllm`` — ``run_train`` of SPPO and online IPO with ``--sampler vllm --verify-sync`` for 2 iterations (arguments
  3-4 as for ``solvers``; argument 5: the tensor-parallel size, default 1; argument 6: the solvers, comma
  separated), one vLLM engine per rank (or per group of ranks) shared by the runs, into OUT/<solver>; then the
  engine is checked against the policy in OUT/<solver>/final;
* ``judge`` — a vLLM sampler engine per rank (argument 4: its tensor-parallel size) and next to it a vLLM judge
  of the tiny policy (argument 3: the tiny directory), which judges this rank's share of ``JUDGED`` pairs
  (OUT/judge-rankR.json: the judge's answers and P(a ≻ b));
* ``solvers`` — ``run_train`` (--backend fsdp) of every registered solver for 2 iterations on the tiny model
  (argument 3: its directory; argument 4: the prompt file), into OUT/<solver>.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from nashpref.lm.backend.fsdp import DDPBackend, FSDPBackend

VOCAB, ROWS, WIDTH = 96, 6, 10


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def global_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (ROWS, WIDTH), generator=torch.Generator().manual_seed(7))


def row_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """(rows,) mean next-token cross-entropy per row."""
    logits = model(input_ids=tokens).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1),
                                             reduction="none").reshape(tokens.shape[0], -1).mean(-1)


def train_step(backend, model, optimizer, tokens: torch.Tensor) -> float:
    """One step on the global batch: this rank's rows, its mean loss scaled by its share × world size (the
    backends average gradients over ranks), so the update is that of the global mean loss."""
    mine = backend.shard(tokens)
    loss = row_losses(model, mine).mean()
    backend.backward(loss * mine.shape[0] / tokens.shape[0] * backend.world_size)
    backend.step(optimizer, max_grad_norm=0.5)
    return backend.reduce({"loss": loss.item()}, count=mine.shape[0])["loss"]


def full_state(backend, model) -> dict:
    return {name: tensor.clone().cpu() for name, tensor in backend.full_weights(model)}


def full_optimizer(optimizer) -> dict:
    out = {}
    for index, (param, state) in enumerate(optimizer.state.items()):
        for key in ("exp_avg", "exp_avg_sq"):
            value = state[key]
            out[f"{index}.{key}"] = (value.full_tensor() if hasattr(value, "full_tensor") else value).clone()
    return out


def train_every_solver(out: Path, tiny: Path, prompts: Path) -> None:
    from nashpref.lm.config import TrainConfig
    from nashpref.lm.trainer import run_train
    from nashpref.solvers import REGISTRY

    runs = {name: {} for name in REGISTRY} | {"online-ipo-bernoulli": {"labels": "bernoulli"}}
    for name, options in runs.items():
        config = TrainConfig(policy=str(tiny / "policy"), preference=f"reward:{tiny / 'reward'}",
                             prompts=str(prompts), solver=name.removesuffix("-bernoulli"), out=out / name,
                             sampler="hf", iterations=2, heldout=3, samples=2, eval_samples=2, max_new_tokens=8,
                             lr=1e-3, tau=0.1, backend="fsdp", timeout=300, **options)
        run_train(config, progress=False)


def train_with_vllm(out: Path, tiny: Path, prompts: Path, world_size: int, tensor_parallel: int = 1,
                    solvers: tuple[str, ...] = ("sppo", "online-ipo")) -> None:
    from nashpref.lm.build import make_vllm_engine
    from nashpref.lm.config import TrainConfig
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.trainer import run_train

    engine = None               # one engine per process: vLLM joins its groups once
    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    for name in solvers:
        config = TrainConfig(policy=str(tiny / "policy"), preference=f"reward:{tiny / 'reward'}",
                             prompts=str(prompts), solver=name, out=out / name, sampler="vllm", verify_sync=True,
                             iterations=2, heldout=3, samples=2, eval_samples=2, max_new_tokens=8, lr=1e-3,
                             tau=0.1, backend="fsdp", timeout=300, tensor_parallel_size=tensor_parallel)
        engine = engine or make_vllm_engine(config, world_size=world_size)
        run_train(config, engine=engine, progress=False)
        final = LMPolicy.from_pretrained(str(out / name / "final"), texts, device="cpu", dtype="float32")[0]
        (out / name / f"engine-rank{engine_rank()}.json").write_text(json.dumps(
            {"version": engine.version, "verify_error": engine.last_verify_error, "tolerance": engine.tolerance,
             "final_error": engine.verify_sync(final),      # the engine holds the weights the run ended with
             "executor": type(engine.llm.llm_engine.model_executor).__name__,
             "tensor_parallel": engine.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size,
             "group": None if engine.group is None else engine.group.size}))


JUDGED = [("describe the red cat", "the red cat sleeps.", "a cat."), ("tell me about a robot", "robots", "a robot."),
          ("what is the river like?", "cold", "the river is wide."), ("say something about a warm star", "hot", "x"),
          ("describe the golden ship", "a ship of gold.", "ship"), ("tell me about a bird", "it flies.", "birds")]


def judge_per_rank(out: Path, tiny: Path, tensor_parallel: int, backend) -> None:
    from nashpref.lm.samplers.vllm import VLLMSampler, per_rank_options
    from nashpref.preferences.judge import JudgeOracle

    policy = VLLMSampler(str(tiny / "policy"), max_model_len=256, tensor_parallel_size=tensor_parallel,
                         engine_kwargs=per_rank_options(backend.world_size, tensor_parallel))
    judge = JudgeOracle.from_pretrained(str(tiny / "policy"), backend="vllm", max_model_len=256)
    answers: list[str] = []
    generate = judge.generate
    judge.generate = lambda messages: answers.extend(generate(messages)) or answers[-len(messages):]
    prompts, a, b = zip(*backend.shard(JUDGED))
    preference = judge.prefer_texts(list(prompts), list(a), list(b)).tolist()
    engine = generate.sampler.llm.llm_engine
    (out / f"judge-rank{backend.rank}.json").write_text(json.dumps(
        {"answers": answers, "preference": preference, "executor": type(engine.model_executor).__name__,
         "tensor_parallel": engine.vllm_config.parallel_config.tensor_parallel_size,
         "separate": generate.sampler.llm is not policy.llm}))


def engine_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def lora_under_fsdp(out: Path, tiny: Path, prompts: Path, backend) -> None:
    from nashpref.lm.config import TrainConfig
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.trainer import run_train

    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    policy, reference = LMPolicy.from_pretrained(str(tiny / "policy"), texts, device="cpu", dtype="float32",
                                                 lora={"r": 4, "target_modules": "all-linear"})
    backend.prepare(policy, reference)
    twin = policy.twin()
    base = {name: p for name, p in twin.named_parameters() if "lora_" not in name}
    with torch.no_grad():                           # a non-zero adapter on the copy (B starts at 0)
        for name, p in twin.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
    contexts = torch.arange(len(texts))
    responses = twin.sample(contexts, 2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        on = twin.log_prob(contexts, responses)
        with twin.model.disable_adapter():
            off = twin.log_prob(contexts, responses)
        mu = reference.log_prob(contexts, responses)
    result = {"reference_tensors": len(list(reference.parameters())), "base_tensors": len(base),
              "shared": len({p.data_ptr() for p in reference.parameters()} & {p.data_ptr() for p in base.values()}),
              "sharded": sum(hasattr(p, "to_local") for p in policy.parameters()),
              "trainable": sorted({n.split(".")[-3] for n, p in policy.named_parameters() if p.requires_grad}),
              "off_equals_reference": torch.equal(off, mu), "on_differs": not torch.equal(on, mu)}
    (out / f"lora-rank{backend.rank}.json").write_text(json.dumps(result))
    for name in ("sppo", "nash-md"):
        config = TrainConfig(policy=str(tiny / "policy"), preference=f"reward:{tiny / 'reward'}", prompts=str(prompts),
                             solver=name, out=out / name, sampler="hf", iterations=2, heldout=3, samples=2,
                             eval_samples=2, max_new_tokens=8, lr=1e-2, tau=0.1, backend="fsdp", timeout=300,
                             lora_rank=4)
        run_train(config, progress=False)


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    if scenario in ("solvers", "lora", "vllm", "judge"):     # one process group for all the runs (each leaves it open)
        backend = FSDPBackend(device="cpu", timeout=300)
        if scenario == "vllm":
            extra = sys.argv[5:]
            train_with_vllm(out, Path(sys.argv[3]), Path(sys.argv[4]), backend.world_size,
                            int(extra[0]) if extra else 1, tuple(extra[1].split(",")) if len(extra) > 1 else
                            ("sppo", "online-ipo"))
        elif scenario == "judge":
            judge_per_rank(out, Path(sys.argv[3]), int(sys.argv[4]), backend)
        elif scenario == "lora":
            lora_under_fsdp(out, Path(sys.argv[3]), Path(sys.argv[4]), backend)
        else:
            train_every_solver(out, Path(sys.argv[3]), Path(sys.argv[4]))
        backend.close()
        return
    if scenario == "prompts":
        from nashpref.errors import BadInput
        from nashpref.lm import data

        backend = FSDPBackend(device="cpu", timeout=60)
        checked, check = [], data._check_prompt

        def counted(row, spec, i, column):          # which rows this rank checked
            checked.append(i)
            return check(row, spec, i, column)

        data._check_prompt = counted
        try:
            result = {"prompts": data.load_prompts(sys.argv[3], sys.argv[4], sys.argv[5])}
        except BadInput as exc:
            result = {"error": str(exc)}
        result["checked"] = checked
        (out / f"prompts-rank{backend.rank}.json").write_text(json.dumps(result))
        backend.close()
        return
    kind = os.environ.get("BACKEND", "fsdp")
    backend = (FSDPBackend if kind == "fsdp" else DDPBackend)(device="cpu", timeout=60)
    r, n = backend.rank, backend.world_size
    result: dict = {"rank": r, "world": n}
    if scenario == "collectives":
        items = list(range(11))
        mine = list(backend.shard(items))
        result["share"] = mine
        result["mean"] = backend.reduce({"x": float(sum(mine)) / max(len(mine), 1)}, count=len(mine))["x"]
        result["plain_mean"] = backend.reduce({"x": float(r)})["x"]
        result["sum"] = backend.reduce_sum({"x": float(r + 1)})["x"]
        result["gathered"] = backend.gather([f"{r}:{i}" for i in mine])
    elif scenario in ("train", "resume"):
        model = tiny_llama()
        backend.prepare(model, None)
        optimizer = backend.make_optimizer(model.parameters(), lr=1e-2, weight_decay=0.01)
        tokens = global_batch()
        if scenario == "train":
            torch.manual_seed(1234 + r)             # per-rank RNG must come back per rank
            before = torch.rand(3)
            result["loss1"] = train_step(backend, model, optimizer, tokens)
            backend.save(out / "checkpoint", model, optimizer, {"iteration": 1, "rows": [{"a": 1}]})
            result["after_save_draw"] = torch.rand(3).tolist()
            result["first_draw"] = before.tolist()
            weights = full_state(backend, model)
            moments = full_optimizer(optimizer)
            if backend.is_main:
                torch.save({"weights": weights, "moments": moments}, out / "step1.pt")
        else:
            state = backend.load(Path(sys.argv[3]), model, optimizer)
            result["state"] = state
            result["after_load_draw"] = torch.rand(3).tolist()
            saved = torch.load(Path(sys.argv[3]).parent / "step1.pt")
            weights, moments = full_state(backend, model), full_optimizer(optimizer)
            result["weights_equal"] = all(torch.equal(weights[k], saved["weights"][k]) for k in saved["weights"])
            result["moments_equal"] = (set(moments) == set(saved["moments"])
                                       and all(torch.equal(moments[k], saved["moments"][k]) for k in moments))
        result["loss2"] = train_step(backend, model, optimizer, tokens)
        weights = full_state(backend, model)
        if backend.is_main:
            torch.save(weights, out / f"{scenario}-final.pt")
    (out / f"{scenario}-rank{r}.json").write_text(json.dumps(result))
    backend.close()


if __name__ == "__main__":
    from nashpref.cli import quick_exit

    main()
    quick_exit(0)           # as the nashpref program ends: no interpreter teardown racing gloo's threads
