"""`nashpref theory {explore,pessimism,payoff,recovery,maxmin}`: the theory experiments on linear contextual bandits
(nashpref.theory), each writing results.json, README.md (its table) and, where it helps, a plot to --out; and
`nashpref theory enhance`: the rejection-sampling enhancer on a language model's responses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Union

import tyro

from nashpref.cli.solve import progress
from nashpref.io import atomic_write, check_output_dir, staged_output, write_json
from nashpref.theory import experiments as ex


@dataclasses.dataclass(kw_only=True)
class Explore(ex.ExploreSettings):
    """Online iterative RLHF with exploration (main policy vs the enhancer) against no exploration (μ vs μ) and
    iterative DPO (main vs main) on random linear games: the exact score per round, mean and 95% interval."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Pessimism(ex.PessimismSettings):
    """Greedy MLE vs the covariance-bonus LCB and the bootstrap-ensemble minimum on narrow offline data: true
    values of the Gibbs policies over seeds."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Payoff(ex.PayoffSettings):
    """The log-odds payoff's equilibrium against the probability payoff's, per game (exact)."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Recovery(ex.RecoverySettings):
    """Parameter recovery of the BT and skew-bilinear MLEs as the data grows (RMSE and its fitted slope)."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Maxmin(ex.MaxminSettings):
    """Max-min alignment over user groups learnt by EM from unlabelled users' comparisons, against one pooled BT
    reward: the true utility of the worst-off group."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Enhance:
    """The enhancer for language models: from each prompt's sampled responses of the main policy, keep those a
    rejection sampler accepts for the uncertainty-seeking tilt within a KL budget, on a fitted linear preference
    model's features and covariance Σ (fit-preference --model bt-linear|skew-bilinear)."""

    linear: str
    """The fit-preference output directory (linear.safetensors, fit.json) whose features and Σ are used."""
    responses: str
    """A .jsonl file with rows {"prompt": …, "responses": [text, …]}: the main policy's draws per prompt."""
    budget: float = 0.1
    """KL budget ε of the enhancer around the main policy (estimated on the draws)."""
    seed: int = 0
    """Seed of the accept/reject draws."""
    out: Path
    """Output directory (enhancer.jsonl, results.json); created only when everything succeeded."""


def run_enhance(cmd: Enhance, tick=lambda: None) -> tuple[dict, dict]:
    import torch

    from nashpref.checks import number
    from nashpref.errors import BadInput
    from nashpref.io import read_jsonl
    from nashpref.lm.loading import require_lm_extra
    from nashpref.preferences.linear import LinearOracle, enhancer_choice

    require_lm_extra("theory enhance")
    number(cmd.budget, "--budget", low_open=False)
    if not Path(cmd.responses).is_file():
        raise BadInput(f"--responses {cmd.responses}: no such file")
    rows = read_jsonl(Path(cmd.responses))
    for i, row in enumerate(rows):
        texts = row.get("responses") if isinstance(row, dict) else None
        if "prompt" not in row or not isinstance(texts, list) or not texts or \
                not all(isinstance(t, str) for t in texts):
            raise BadInput(f"--responses {cmd.responses}: row {i} needs a prompt and a non-empty list of texts "
                           f"under 'responses'")
    oracle = LinearOracle.from_spec(cmd.linear)
    generator = torch.Generator().manual_seed(cmd.seed)
    chosen = []
    for row in rows:
        chosen.append(enhancer_choice(oracle, row["prompt"], row["responses"], cmd.budget, generator))
        tick()
    draws, kept = sum(len(r["responses"]) for r in chosen), sum(len(r["enhancer"]) for r in chosen)
    gain = sum(r["width_enhancer"] - r["width_main"] for r in chosen) / len(chosen)
    table = (f"prompts {len(chosen)}, draws {draws}, accepted {kept} ({kept / draws:.1%}); mean uncertainty "
             f"gain ‖w‖_Σ⁻¹ (enhancer − main) {gain:.4g}")
    summary = {"table": table, "prompts": len(chosen), "draws": draws, "accepted": kept, "mean_width_gain": gain}
    return summary, {"results.json": summary,
                     "enhancer.jsonl": "".join(json.dumps(r) + "\n" for r in chosen)}


def _described(cls, name: str):
    return Annotated[cls, tyro.conf.subcommand(name, description=" ".join(cls.__doc__.split()))]


TheoryCommand = Union[_described(Explore, "explore"), _described(Pessimism, "pessimism"),
                      _described(Payoff, "payoff"), _described(Recovery, "recovery"),
                      _described(Maxmin, "maxmin"), _described(Enhance, "enhance")]


@dataclasses.dataclass
class Theory:
    """Experiments from the theory of RLHF as a KL-regularised contextual bandit / preference game, checked exactly
    on linear contextual bandits (see docs/theory.md)."""

    experiment: tyro.conf.OmitSubcommandPrefixes[TheoryCommand]
    """Which experiment."""


RUNS = {Explore: (ex.run_explore, lambda c: c.seeds * 3), Pessimism: (ex.run_pessimism, lambda c: c.seeds),
        Payoff: (ex.run_payoff, lambda c: len(c.games)), Recovery: (ex.run_recovery, lambda c: 2 * len(c.sizes)),
        Maxmin: (ex.run_maxmin, lambda c: c.seeds), Enhance: (run_enhance, lambda c: None)}


def run_theory(cmd: Theory) -> int:
    experiment = cmd.experiment
    check_output_dir(experiment.out)
    run, total = RUNS[type(experiment)]
    with progress(total(experiment), f"theory {type(experiment).__name__.lower()}") as bar:
        summary, files = run(experiment, tick=bar.update)
    with staged_output(experiment.out) as staging:
        for name, content in files.items():
            if isinstance(content, dict):
                write_json(staging / name, content)
            elif isinstance(content, str):
                atomic_write(staging / name, content)
            else:
                content(staging / name)
    print(summary["table"])
    print(f"wrote {experiment.out}")
    return 0
