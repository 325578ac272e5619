"""``nashpref train``: self-play training of a transformers causal LM with any registered solver.

The tabular driver (``nashpref/sampled.py``) and this one run the same loop (:func:`nashpref.selfplay.self_play`)
with the same solver ``collect`` / ``loss``; only the policy (an :class:`~nashpref.lm.policy.LMPolicy`), the
sampler (vLLM or transformers) and the oracle (a text preference) differ. The run is built and checked in
``nashpref.lm.build``; around the loop this module adds, through the loop's hooks (:class:`TrainHooks`):

* **evaluation** on held-out prompts after every iteration (``nashpref.lm.evaluation``);
* **records**: ``OUT/metrics.jsonl`` (one row per iteration), ``OUT/rounds/iteration-XXXX.jsonl`` (every
  preference query of the round: prompt, both responses and P(a ≻ b)) and a seconds split into sampling,
  judging, weight sync, evaluation and training;
* ``OUT/final/``: the trained policy as a plain transformers checkpoint with its tokenizer.

Checkpoints are the loop's own (``nashpref.lm.checkpoints``, written by the backend after every iteration);
``--resume`` continues from the last one and ends with the same weights as a run that was never interrupted
(bit for bit on CPU); workers that torchrun restarts (``--max-restarts``) resume by
themselves. Everything that can be wrong with the input is found before ``OUT`` is touched and raised
as one line (``nashpref.errors``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from nashpref.errors import BadInput
from nashpref.io import publish_directory, write_json, write_jsonl
from nashpref.lm.backend.distributed import DistributedError, describe_failure, restarted_by_torchrun
from nashpref.lm.backend.single import SingleBackend
from nashpref.lm.build import (check_out, check_prompts_fit, check_solver_options, check_vllm_ranks, load_policies,
                               make_vllm_engine, probe_oracle, sampler_kind, split_prompts)
from nashpref.lm.checkpoints import CHECKPOINTS, latest_state
from nashpref.lm.config import TrainConfig, describe_config, make_solver
from nashpref.lm.evaluation import HeldOutEvaluator
from nashpref.lm.loading import check_model_path, require_lm_extra
from nashpref.lm.provenance import SampleLedger
from nashpref.selfplay import Hooks, Iteration, self_play
from nashpref.solvers import Solver

__all__ = ["TrainConfig", "TrainResult", "TrainHooks", "run_train", "save_final"]


@dataclasses.dataclass
class TrainResult:
    """What ``run_train`` did."""

    rows: list[dict]
    """One metrics row per iteration (the contents of metrics.jsonl)."""
    final: Path
    """OUT/final: the trained policy and its tokenizer."""
    iterations: int
    """Iterations done in total (including those before a resume)."""
    seconds: float
    """Wall-clock seconds of training and evaluation in total (including those before a resume)."""


def lr_at(lr: float, decay: float, warmup: int, iteration: int) -> float:
    """The learning rate of ``iteration`` (from 1): lr · decay^(t−1), times t/(warmup + 1) while t ≤ warmup."""
    return lr * decay ** (iteration - 1) * min(1.0, iteration / (warmup + 1))


class TrainHooks(Hooks):
    """The loop's hooks for a language model: held-out evaluation, the round datasets, metrics.jsonl (rank 0
    writes), the time split and the progress bar."""

    record_queries = True

    def __init__(self, out: Path, evaluator: HeldOutEvaluator | None, sampler, prompt_rows: list[int], bar,
                 rows: list[dict], backend, ledger: SampleLedger | None = None):
        self.out, self.evaluator, self.sampler, self.prompt_rows = out, evaluator, sampler, prompt_rows
        self.bar, self.rows, self.backend, self.write = bar, rows, backend, backend.is_main
        self.ledger = ledger if ledger is not None else SampleLedger()
        self.round_step = 0
        self.started = False
        self.tracker = None                 # nashpref.tracking: every number of each row, per iteration
        self.sync = {"start": 0.0, "evaluation": 0.0}     # sync seconds at round start, during evaluation
        self.evaluation_seconds = 0.0
        self.optimizer, self.lr, self.lr_decay, self.lr_warmup = None, None, 1.0, 0   # set by _train: lr schedule
        self.oracle = None                  # an oracle with state across rounds (maxmin:), saved in checkpoints

    def synced(self) -> float:
        """Seconds the sampler has spent syncing weights so far (0 for samplers that share the policy's)."""
        return getattr(self.sampler, "sync_seconds", 0.0)

    def round_start(self, iteration: int) -> None:
        if self.evaluator is not None and not self.started:
            self.evaluator.start()          # π_t's and μ's responses, once the weights are restored
            self.started = True
        self.sync["start"] = self.synced()
        if self.lr is not None:             # set per iteration, so a resumed run follows the same schedule
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.lr, self.lr_decay, self.lr_warmup, iteration)
        self.ledger.phase, self.round_step = "round", self.ledger.weights_step

    def evaluate(self, iteration: int) -> dict[str, float]:
        before, start = self.synced(), time.perf_counter()
        self.ledger.phase = "heldout"
        result = self.evaluator() if self.evaluator is not None else {}    # syncs π_{t+1} into a vLLM engine
        self.ledger.phase = None
        self.evaluation_seconds = time.perf_counter() - start
        self.sync["evaluation"] = self.synced() - before
        self.sync["round"] = before - self.sync["start"]
        return result

    def round_end(self, report: Iteration) -> None:
        # Gathered per preference call, so the rows come in the order one process would write them.
        pairs = [row for r in report.rounds for call in r.queried
                 for row in self.backend.gather(self.query_rows([call]))]
        sampling = sum(r.seconds["sampling"] for r in report.rounds)
        judging = sum(r.seconds["judging"] for r in report.rounds)
        row = {"iteration": report.iteration} | report.metrics
        drawn = self.backend.reduce({"drawn": sum(r.drawn for r in report.rounds)})["drawn"]
        row |= {"queries": report.queries, "pairs": len(pairs), "samples": round(drawn * self.backend.world_size)}
        row |= report.evaluation | (self.oracle.loop_metrics() if self.oracle is not None else {})
        backends, labels, stale = self.ledger.take()
        row |= {"samplers": backends, "sample_weights": labels, "round_weights": self.round_step,
                "trained_weights": self.ledger.weights_step}
        SampleLedger.check(report.iteration, stale)     # before anything of this iteration is written
        row |= {"sampling_seconds": sampling, "judging_seconds": judging,
                "sync_seconds": self.sync["round"] + self.sync["evaluation"],
                "training_seconds": report.round_seconds - sampling - judging - self.sync["round"],
                "evaluation_seconds": self.evaluation_seconds - self.sync["evaluation"], "seconds": report.seconds}
        self.rows.append(row)
        if self.tracker is not None:
            self.tracker.log(row, report.iteration)
        if self.write:
            write_jsonl(self.out / "rounds" / f"iteration-{report.iteration:04d}.jsonl",
                        [{"iteration": report.iteration} | r for r in pairs])
            write_jsonl(self.out / "metrics.jsonl", self.rows)
        self.bar.set_postfix({key: f"{row[key]:.3g}" for key in ("loss", "win_rate_vs_reference") if key in row},
                             refresh=False)
        self.bar.update()

    def query_rows(self, queried: list) -> list[dict]:
        """One row per preference query: the context, its prompt row in the prompt file, both texts and P."""
        rows = []
        for contexts, a, b, p in queried:
            texts_a, texts_b = a.texts, b.texts
            for i, context in enumerate(contexts.tolist()):
                for m in range(p.shape[1]):
                    rows.append({"context": context, "prompt_row": self.prompt_rows[context], "prompt": a.prompts[i],
                                 "a": texts_a[i][m], "b": texts_b[i][m], "preference": float(p[i, m])})
        return rows

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows], "weights_step": self.ledger.weights_step,
                "oracle": self.oracle.loop_state() if self.oracle is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.rows[:] = [dict(row) for row in state["rows"]]
        self.ledger.weights_step = state.get("weights_step", 0)
        if self.oracle is not None and state.get("oracle") is not None:
            self.oracle.load_loop_state(state["oracle"])


def run_train(config: TrainConfig, solver: Solver | None = None, *, engine=None,
              progress: bool = True, report_to: str = "none",
              score=None) -> TrainResult:
    """Train ``config.policy`` with ``solver`` (default: built from ``config.solver`` and its options).

    ``engine`` may pass in a running ``VLLMSampler`` to reuse (its weights are replaced by the policy's at the
    first round); otherwise one is started when the sampler is vllm. ``score(responses) -> dict`` adds a caller's
    metrics of each iterate's held-out responses to its metrics row. Bad input raises a NashprefError before
    ``config.out`` is touched.
    """
    require_lm_extra("train")
    if restarted_by_torchrun():                 # torchrun --max-restarts: continue from the last checkpoint
        config = dataclasses.replace(config, resume=True)
    config.validate()
    solver = solver if solver is not None else make_solver(config)
    check_solver_options(solver, config.tau, config.samples)
    described = describe_config(config, solver)
    backend = make_backend(config)
    check_out(config, described)
    kind = sampler_kind(config)
    ranks = None if isinstance(backend, SingleBackend) else backend.world_size      # torchrun: one engine per rank
    if kind == "vllm" and ranks is not None:
        check_vllm_ranks(config, ranks)
    config = dataclasses.replace(config, device=str(backend.device))

    from nashpref.lm.data import load_prompts
    from nashpref.preferences import load_text_oracle

    for model in (config.policy, config.reference):
        if model is not None:
            check_model_path(model)                 # cheap checks first, and before vLLM's own errors
    prompts = load_prompts(config.prompts, config.prompt_column, config.prompt_split, config.max_prompts)
    train_rows, heldout_rows = split_prompts(prompts, config.heldout, config.seed)
    ordered = [prompts[i] for i in train_rows + heldout_rows]
    check_prompts_fit(config, ordered)
    oracle = load_text_oracle(config.preference, device=config.device, dtype=config.dtype)
    sampler = None
    if kind == "vllm":
        mixture = getattr(solver, "samples_mixture", False)
        sampler = engine if engine is not None else make_vllm_engine(config, mixture, ranks)
        sampler.verify = config.verify_sync
    torch.manual_seed(config.seed)              # a LoRA adapter's initial weights come from the global RNG
    policy, reference = load_policies(config, ordered, sampler)
    if hasattr(sampler, "reference_sampler"):
        reference.sampler = sampler.reference_sampler()     # μ's samples from the engine's reference half
        if config.verify_sync:
            sampler.verify_reference(reference)
    probe_oracle(oracle, policy, config.preference, config.seed)

    backend.barrier()                           # every rank has checked OUT before rank 0 writes there
    if backend.is_main:
        config.out.mkdir(parents=True, exist_ok=True)
        write_json(config.out / "config.json", described)
    backend.barrier()
    from nashpref.tracking import make_tracker

    tracker = make_tracker(report_to if backend.is_main else "none", config.out, config=described,
                           name=config.out.name)
    try:
        return _train(config, solver, policy, reference, oracle, sampler, train_rows, heldout_rows, progress,
                      backend, tracker, score)
    except (RuntimeError, OSError) as exc:
        reason = describe_failure(exc) if backend.world_size > 1 else None
        if reason is None:
            raise
        raise DistributedError(reason) from None
    finally:
        tracker.close()


def make_backend(config: TrainConfig):
    """single without torchrun, fsdp under it (``--backend auto``); the process group is joined here."""
    from nashpref.lm.backend.distributed import launched_by_torchrun

    kind = config.backend
    if kind == "auto":
        kind = "fsdp" if launched_by_torchrun() else "single"
    if kind == "single":
        if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise BadInput("--backend single runs one process; under torchrun with several ranks use --backend "
                           "fsdp or ddp")
        return SingleBackend(config.device)
    from nashpref.lm.backend.fsdp import DDPBackend, FSDPBackend

    return (FSDPBackend if kind == "fsdp" else DDPBackend)(config.device, config.timeout)


def _train(config, solver, policy, reference, oracle, sampler, train_rows, heldout_rows, progress,
           backend, tracker, score=None) -> TrainResult:
    out = config.out
    backend.prepare(policy, reference)
    optimizer = backend.make_optimizer([p for p in policy.parameters() if p.requires_grad], config.lr,
                                       config.weight_decay, config.adam_beta1)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    saved = latest_state(out / CHECKPOINTS) if config.resume else None
    done = saved["iteration"] if saved is not None else 0
    if done > config.iterations:
        raise BadInput(f"--iterations {config.iterations}: the run in {out} is already at iteration {done}")
    rows = [dict(row) for row in saved["hooks"]["rows"]] if saved is not None else []
    if backend.is_main:
        write_jsonl(out / "metrics.jsonl", rows)
        rounds = out / "rounds"
        rounds.mkdir(exist_ok=True)
        for stale in rounds.glob("iteration-*.jsonl"):       # from a killed run, past its last checkpoint
            if int(stale.stem.split("-")[1]) > done:
                stale.unlink()

    num_train = len(train_rows)
    evaluator = None
    if heldout_rows:
        evaluator = HeldOutEvaluator(policy, reference, oracle, torch.arange(num_train, num_train + len(heldout_rows)),
                                     config.eval_samples, config.seed + 1, score)
    bar = _progress_bar(config.iterations, done, solver.name, progress and backend.is_main)
    ledger = SampleLedger()                 # labels the policy's weights with its optimizer steps
    optimizer.register_step_post_hook(ledger.on_step)
    ledger.attach(policy, "policy")
    ledger.attach(reference, "reference")
    if sampler is not None:
        sampler.ledger = ledger
        sampler._held = None                # the next sync is labelled
    hooks = TrainHooks(out, evaluator, sampler, train_rows + heldout_rows, bar, rows, backend, ledger)
    hooks.tracker = tracker if backend.is_main else None
    if config.lr_decay != 1.0 or config.lr_warmup > 0:
        hooks.optimizer, hooks.lr = optimizer, config.lr
        hooks.lr_decay, hooks.lr_warmup = config.lr_decay, config.lr_warmup
    from nashpref.preferences.payoff import game_oracle, stateful_oracle

    played, tau = game_oracle(oracle, config.payoff, config.tau, reference, config.seed)   # --payoff, maxmin:
    hooks.oracle = stateful_oracle(played)
    with bar:
        state = self_play(solver, policy, reference, played, optimizer, num_contexts=num_train,
                          iterations=config.iterations, samples=config.samples, generator=generator,
                          tau=tau, exact_labels=config.labels == "exact", epochs=config.epochs,
                          minibatches=config.minibatches, contexts_per_round=config.prompts_per_round,
                          grad_accumulation=config.grad_accumulation, max_grad_norm=config.max_grad_norm,
                          backend=backend, hooks=hooks, checkpoints=out / CHECKPOINTS, resume=config.resume)
    model = policy.twin() if hasattr(policy, "twin") else policy     # a sharded policy: all ranks gather it
    final = save_final(out, model) if backend.is_main else out / "final"
    backend.close()
    return TrainResult(rows=hooks.rows, final=final, iterations=state["iteration"], seconds=state["seconds"])


def save_final(out: Path, policy) -> Path:
    """OUT/final: the policy (LoRA merged) and tokenizer, loadable with AutoModelForCausalLM.from_pretrained."""
    return publish_directory(out / "final", policy.save_pretrained)


def _progress_bar(total: int, done: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"train {name}", unit="it", file=sys.stderr,
                disable=None if enabled else True, leave=False, dynamic_ncols=True)
