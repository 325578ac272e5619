"""``nashpref bench llm``: every solver and iterative DPO on a tiny language model under a known intransitive
preference, scored by that ground truth on held-out prompts.

The world (``nashpref.benchmarks.llm.setup``): a tiny Llama made offline and SFT'd on a styled corpus, and the
``rule:raters`` oracle — three raters whose majority over response styles is a cycle, plus a quality term. Each
method trains from the same μ for the same iterations on the same prompts, samples per prompt and seeds, sharing
one vLLM engine (weights are swapped in, never reloaded from disk). Then every final policy answers the held-out
prompts and the oracle scores:

* win-rate against the reference μ and against iterative DPO's final policy of the same seed;
* exploitability max_c E_{y~π} P(c ≻ y) − ½, c from a pool of candidate responses per prompt: the samples of every
  policy plus one hand-written top-quality response per style. Since ``rule:raters`` reads a response only through
  (style, quality), those three include the exact best response, so the pool estimate is exact up to sampling
  of y ~ π; also the best of the candidate *policies* (μ and every final);
* the τ-regularised duality gap of the policy's distribution over (style, quality) classes in the exact game on
  those classes (μ's class shares as reference): P depends on y only through its class, so the KL-regularised
  equilibrium keeps μ's law within each class and the LM game reduces exactly to this small one;
* KL(π‖μ) (per-token exact KL summed over the response), and the time per iteration split into sampling, judging,
  training and weight sync.

Means over seeds carry 95% Student-t intervals (the report and the plot are in ``nashpref.benchmarks.llm.report``).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nashpref.benchmarks.llm.config import Budget, LLMBenchConfig, resolve_budget, resolve_defaults, validate
from nashpref.benchmarks.llm.report import BASELINE, ORACLE, machine, plot, report, summarise
from nashpref.benchmarks.llm.runs import run_dir, start_output, train_each
from nashpref.benchmarks.llm.setup import build_setup, describe_responses, styled_response
from nashpref.errors import BadInput
from nashpref.io import atomic_write
from nashpref.lm.build import sampler_kind


# ---- training --------------------------------------------------------------------------------------------------
def train_config(config: LLMBenchConfig, budget: Budget, setup: Path, method: str, seed: int, kind: str):
    from nashpref.lm.config import TrainConfig

    return TrainConfig(policy=str(setup / "policy"), preference=ORACLE, prompts=str(setup / "prompts-train.jsonl"),
                       solver=method, out=run_dir(config, method, seed), heldout=0, tau=config.tau, sampler=kind,
                       iterations=budget.iterations, samples=budget.samples, lr=budget.lr, seed=seed,
                       max_new_tokens=budget.max_new_tokens, device=config.device, resume=True)


def train_all(config: LLMBenchConfig, budget: Budget, setup: Path, kind: str, engine) -> tuple[dict, list]:
    """Train every (method, seed) of the raters preset; see :func:`runs.train_each`."""
    return train_each(config, budget.iterations,
                      lambda method, seed: train_config(config, budget, setup, method, seed, kind), engine=engine)


# ---- evaluation ------------------------------------------------------------------------------------------------
def load_weights(policy, directory: Path) -> None:
    """A saved transformers checkpoint's weights into ``policy`` (same architecture)."""
    from safetensors.torch import load_file

    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state |= load_file(file)
    missing, unexpected = policy.model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("rotary_emb.inv_freq")]:
        raise BadInput(f"{directory}: weights do not match the setup's model ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected)")


def ideal_candidates(prompts: list[str], seed: int) -> list[list[str]]:
    """Per prompt, one well-formed on-topic response in each style (quality 1): the best responses of the
    raters rule lie among them."""
    from nashpref.preferences.rule import STYLES, prompt_noun

    rng = random.Random(seed)
    return [[styled_response(prompt_noun(p), s, rng) for s in STYLES] for p in prompts]


def win_rate(oracle, prompts: list[str], a: list[list[str]], b: list[list[str]]) -> float:
    """Mean over prompts of the mean P(a_i ≻ b_j) over all pairs of the two response sets."""
    flat_p, flat_a, flat_b = [], [], []
    for p, rows_a, rows_b in zip(prompts, a, b):
        for x in rows_a:
            for y in rows_b:
                flat_p.append(p)
                flat_a.append(x)
                flat_b.append(y)
    probs = oracle.prefer_texts(flat_p, flat_a, flat_b).double()
    return probs.reshape(len(prompts), -1).mean(1).mean().item()


def pool_best_response(oracle, prompts: list[str], pool: list[list[str]], responses: list[list[str]]) -> float:
    """Mean over prompts of max_c mean_j P(c ≻ y_j), c from that prompt's pool."""
    values = []
    for p, candidates, rows in zip(prompts, pool, responses):
        flat_c = [c for c in candidates for _ in rows]
        flat_y = [y for _ in candidates for y in rows]
        probs = oracle.prefer_texts([p] * len(flat_c), flat_c, flat_y).double().reshape(len(candidates), -1)
        values.append(probs.mean(1).max().item())
    return sum(values) / len(values)


@dataclass
class ClassGame:
    """The exact KL-regularised game on (style, quality) classes, μ's class shares (pooled over prompts) as its
    reference. P depends on a response only through its class, so the LM game's equilibrium keeps μ's law within
    each class and is this game's equilibrium. Classes that μ never produced are left out (no policy at finite KL
    reaches them)."""

    classes: list
    keep: list[int]
    game: object
    equilibrium: torch.Tensor

    @classmethod
    def build(cls, prompts: list[str], reference: list[list[str]], tau: float) -> "ClassGame":
        from nashpref.core.equilibrium import solve_equilibrium
        from nashpref.core.game import PreferenceGame
        from nashpref.preferences.rule import STYLES, raters_probability

        classes = [(s, q) for s in STYLES for q in (0.0, 0.5, 1.0)]
        mu = class_shares(classes, prompts, reference)
        keep = (mu > 0).nonzero().flatten().tolist()
        kept = [classes[i] for i in keep]
        matrix = torch.tensor([[raters_probability(*a, *b) for b in kept] for a in kept], dtype=torch.float64)
        game = PreferenceGame.create(matrix, mu[keep], tau, name="class game")
        return cls(classes, keep, game, solve_equilibrium(game).policy)

    def score(self, prompts: list[str], responses: list[list[str]]) -> dict:
        """The duality gap of the class shares of ``responses`` (renormalised to μ's classes), the share outside
        them, and the game's classes, equilibrium and μ."""
        pi = class_shares(self.classes, prompts, responses)
        outside = pi[[i for i in range(len(self.classes)) if i not in self.keep]].sum().item()
        inside = pi[self.keep]
        inside = inside / inside.sum() if inside.sum() > 0 else self.game.mu[0]
        return {"gap": self.game.gap(inside[None]).item(), "mass_outside_mu": outside,
                "classes": [f"{s}/q{q:g}" for s, q in (self.classes[i] for i in self.keep)],
                "equilibrium": self.equilibrium[0].tolist(), "mu": self.game.mu[0].tolist()}


def class_shares(classes: list, prompts: list[str], rows_per_prompt: list[list[str]]) -> torch.Tensor:
    from nashpref.preferences.rule import raters_features

    index = {c: i for i, c in enumerate(classes)}
    counts = torch.zeros(len(classes), dtype=torch.float64)
    for p, rows in zip(prompts, rows_per_prompt):
        for y in rows:
            counts[index[raters_features(p, y)]] += 1
    return counts / counts.sum()


def class_game_gap(prompts: list[str], reference: list[list[str]], responses: list[list[str]], tau: float) -> dict:
    """``ClassGame.build(prompts, reference, tau).score(prompts, responses)``."""
    return ClassGame.build(prompts, reference, tau).score(prompts, responses)


def evaluate(config: LLMBenchConfig, budget: Budget, setup: Path, kind: str, engine) -> dict:
    """Every final policy and μ answer the held-out prompts (same sampling seed); the oracle scores them."""
    from nashpref.lm.policy import LMPolicy
    from nashpref.preferences import load_text_oracle
    from nashpref.lm.samplers.base import SamplingConfig
    from nashpref.lm.evaluation import sequence_kl

    prompts = [json.loads(line)["prompt"]
               for line in (setup / "prompts-heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    contexts = torch.arange(len(prompts))
    sampling = SamplingConfig(max_new_tokens=budget.max_new_tokens)
    policy, reference = LMPolicy.from_pretrained(str(setup / "policy"), prompts, device=config.device,
                                                 sampler=engine, sampling=sampling, verify_every_sync=False)
    oracle = load_text_oracle(ORACLE)

    def answer(model) -> object:
        generator = torch.Generator().manual_seed(10_000)       # the same seed for every policy
        if engine is None:
            return model.sample(contexts, budget.eval_samples, generator)
        engine.sync_weights(model)
        return engine.sample(model, contexts, budget.eval_samples, generator)

    texts: dict[str, list[list[str]]] = {}
    stats: dict[str, dict] = {}
    names = ["reference"] + [f"{m}/seed-{s}" for s in config.seeds for m in config.methods]
    for name in names:
        if name == "reference":
            responses = answer(reference)
        else:
            method, seed = name.split("/")
            load_weights(policy, run_dir(config, method, int(seed.removeprefix("seed-"))) / "final")
            responses = answer(policy)
        texts[name] = responses.texts
        kl = 0.0 if name == "reference" else sequence_kl(policy, reference, contexts, responses).mean().item()
        stats[name] = describe_responses(prompts, responses.texts) | {"kl_to_reference": kl,
                                                                       "response_tokens": responses.lengths.double()
                                                                       .mean().item()}
    pool = [ideal + [y for name in names for y in texts[name][i]]
            for i, ideal in enumerate(ideal_candidates(prompts, config.setup_seed))]
    versus = {(a, b): win_rate(oracle, prompts, texts[a], texts[b]) for a in names for b in names}
    game = ClassGame.build(prompts, texts["reference"], config.tau)
    for name in names:
        baseline = f"{BASELINE}/{name.split('/')[-1]}"
        stats[name]["win_rate_vs_reference"] = versus[(name, "reference")]
        if baseline in texts and name != "reference":
            stats[name]["win_rate_vs_baseline"] = versus[(name, baseline)]
        stats[name]["exploitability_responses"] = pool_best_response(oracle, prompts, pool, texts[name]) - 0.5
        stats[name]["exploitability_policies"] = max(versus[(other, name)] for other in names) - 0.5
        scored = game.score(prompts, texts[name])
        stats[name]["class_gap"] = scored["gap"]
        stats[name]["class_mass_outside_mu"] = scored["mass_outside_mu"]
    equilibrium = game.score(prompts, texts["reference"])
    examples = {name: texts[name][0][:4] for name in names}
    return {"prompts": len(prompts), "stats": stats, "class_game": equilibrium, "examples": examples,
            "example_prompt": prompts[0]}


# ---- the command -----------------------------------------------------------------------------------------------
def run_bench_llm(config: LLMBenchConfig, command: str | None = None) -> Path:
    """Build or reuse the setup, train every method and seed, score them; returns the report's path."""
    config = resolve_defaults(config)
    validate(config)
    if config.preset == "pairwise":
        from nashpref.benchmarks.llm.pairwise_race import run_pairwise

        return run_pairwise(config, command)
    if config.preset != "raters":
        from nashpref.benchmarks.llm.race import run_race

        return run_race(config, command)
    budget = resolve_budget(config)
    kind = sampler_kind(config)
    started, load_before, date = start_output(config)
    out = config.out
    setup = build_setup(out / "setup", config.size, config.setup_seed)
    setup_info = json.loads((setup / "setup.json").read_text(encoding="utf-8"))
    engine = None
    if kind == "vllm":
        from nashpref.lm.samplers.base import SamplingConfig
        from nashpref.lm.samplers.vllm import VLLMSampler

        engine = VLLMSampler(str(setup / "policy"), SamplingConfig(max_new_tokens=budget.max_new_tokens),
                             seed=config.setup_seed)
    try:
        rows, reused = train_all(config, budget, setup, kind, engine)
        evaluation = evaluate(config, budget, setup, kind, engine)
    finally:
        if engine is not None:
            engine.close()
    summary = summarise(config, rows, evaluation)
    meta = {"command": command or "nashpref bench llm", "date": date, "load_before": load_before,
            "seconds": time.perf_counter() - started, "sampler": kind, "machine": machine(), "reused_runs": reused,
            "run_seconds": sum(r[-1]["seconds"] for r in rows.values())}
    results = {"meta": meta, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
               "budget": asdict(budget), "setup": setup_info, "summary": summary, "evaluation": evaluation,
               "runs": {f"{m}/seed-{s}": r for (m, s), r in rows.items()}}
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write(out / "llm.png", lambda handle: plot(summary, evaluation, handle))
    atomic_write(out / "README.md", report(config, budget, meta, summary, evaluation, setup_info))
    return out / "README.md"
