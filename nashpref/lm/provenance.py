"""Which backend and which weights produced each round's samples, so stale weights are visible, not silent.

A sampler that holds its own copy of the weights (vLLM) samples from whatever it was last given. If a sync is
skipped, a round's samples come from the previous round's policy and nothing else looks wrong: losses,
win-rates and log-prob ratios all stay plausible. The ledger labels the policy's weights with the number of
optimizer steps applied to them (``weights_step``), the engine records the label of the weights it was synced
to, and every sample call notes (kind, backend, label). At the end of a round the labels must equal the
label of the live policy when they were drawn: π_t's for the round, π_{t+½}'s for an extragradient half-step
round, π_{t+1}'s for the held-out evaluation.
"""

from __future__ import annotations

from nashpref.errors import StaleSamplesError

__all__ = ["SampleLedger", "StaleSamplesError", "sample_backend"]


def sample_backend(sampler) -> str:
    """'vllm' or 'hf' (a sampler without a ``backend`` attribute is the transformers one)."""
    return getattr(sampler, "backend", "hf")


class SampleLedger:
    """Counts optimizer steps (``optimizer.register_step_post_hook(ledger.on_step)``) and collects, per round,
    the (backend, weights label) of every kind of sample: 'policy', 'mixture', 'reference', 'heldout'. A sample
    is stale when its label differs from the live policy's at the moment it was drawn (a frozen π_t refuses to
    sample once the live weights moved, so the live label is π_t's)."""

    def __init__(self, weights_step: int = 0):
        self.weights_step = weights_step
        """Optimizer steps applied to the live policy so far: the label of its current weights."""
        self.entries: dict[str, set[tuple[str, int | None]]] = {}
        self.stale: list[str] = []
        self.phase: str | None = None
        """'round' (the solver's samples), 'heldout' (the evaluation's) or None (not recorded)."""

    def on_step(self, *_) -> None:
        self.weights_step += 1

    def attach(self, policy, role: str) -> None:
        """Have ``policy`` (an LMPolicy, ``role`` 'policy' or 'reference') note every sample it draws here."""
        policy.provenance = (self, role)

    def note(self, role: str, call: str, sampler) -> None:
        """An LMPolicy drew samples (``call`` 'policy' or 'mixture') with ``sampler`` (None: the transformers
        mixture decoder on its own modules). A sampler with its own copy of the weights reports their label."""
        if self.phase is None:
            return
        kind = "heldout" if self.phase == "heldout" else ("reference" if role == "reference" else call)
        own_copy = hasattr(sampler, "ensure_synced")
        self.record(kind, sampler, getattr(sampler, "synced_step", None) if own_copy else None,
                    frozen=role == "reference")
        if own_copy and role != "reference" and sampler.synced_step is None:
            self.stale.append(f"{kind} samples came from weights synced before they were labelled")

    def record(self, kind: str, sampler, synced_step: int | None = None, frozen: bool = False) -> None:
        """Note one sample call. ``synced_step``: the label of the weights a sampler with its own copy was synced
        to (None: it samples the live module, so the live label applies); ``frozen``: the reference (no label)."""
        label = None if frozen else (self.weights_step if synced_step is None else synced_step)
        self.entries.setdefault(kind, set()).add((sample_backend(sampler), label))
        if label is not None and label != self.weights_step:
            self.stale.append(f"{kind} samples came from weights after step {label} while the policy was at "
                              f"step {self.weights_step}")

    def take(self) -> tuple[dict[str, str], dict[str, list[int]], list[str]]:
        """({kind: backend}, {kind: sorted weight labels}, stale-sample messages) since the last take; several
        backends for one kind are joined with '+'."""
        entries, self.entries = self.entries, {}
        stale, self.stale = self.stale, []
        backends = {kind: "+".join(sorted({b for b, _ in found})) for kind, found in sorted(entries.items())}
        labels = {kind: sorted({s for _, s in found if s is not None}) for kind, found in sorted(entries.items())}
        return backends, {kind: value for kind, value in labels.items() if value}, stale

    @staticmethod
    def check(iteration: int, stale: list[str]) -> None:
        """Raise :class:`StaleSamplesError` when any sample of the iteration was stale."""
        if stale:
            raise StaleSamplesError(f"iteration {iteration}: {stale[0]}: the sampler was not synced"
                                    + (f" ({len(stale) - 1} more)" if len(stale) > 1 else ""))
