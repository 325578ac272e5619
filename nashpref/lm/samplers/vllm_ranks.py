"""One vLLM engine per torchrun rank (or per group of K ranks with tensor parallelism): the engine options,
the group of ranks that share a tensor-parallel engine, and the step that makes per-rank engines independent."""

from __future__ import annotations

__all__ = ["per_rank_options", "EngineGroup", "running_tensor_parallel_size"]


def per_rank_options(world_size: int, tensor_parallel_size: int = 1) -> dict:
    """Engine options for one engine per rank under torchrun (the process group already joined): vLLM's
    ``external_launcher`` runs the engine in the training process and takes ranks from torchrun's environment;
    it asks for ``data_parallel_size`` × ``tensor_parallel_size`` = the world size (with ``data_parallel_size``
    left at 1 every rank but 0 is refused)."""
    return {"distributed_executor_backend": "external_launcher",
            "data_parallel_size": world_size // tensor_parallel_size}


class EngineGroup:
    """The ranks that run one tensor-parallel engine under torchrun (vLLM's tensor-parallel group). Each rank of
    it has its own share of a round's prompts, but under the external launcher every rank runs its own scheduler
    for its part of the engine, and the parts meet in the all-reduces of every forward: they must be given the
    same requests in the same order, or the all-reduces would pair different forwards. ``union`` gathers the
    members' items in rank order."""

    def __init__(self, group):
        import torch.distributed as dist

        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    @classmethod
    def of_engine(cls) -> "EngineGroup":
        from vllm.distributed.parallel_state import get_tp_group

        return cls(get_tp_group().cpu_group)

    def union(self, items: list) -> tuple[list, int]:
        """(the group's items, in rank order; where this rank's own begin among them)."""
        import torch.distributed as dist

        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(items), group=self.group)
        return [item for part in parts for item in part], sum(len(part) for part in parts[: self.rank])


def running_tensor_parallel_size() -> int:
    """The tensor-parallel size vLLM's groups in this process were made with (1 when none were made yet): vLLM
    keeps one set of groups per process, so a second engine (a judge next to the sampler) must use the same."""
    import sys

    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is None or not state.model_parallel_is_initialized():
        return 1
    return state.get_tensor_model_parallel_world_size()


def _decouple(llm) -> None:
    """Make a per-rank engine independent of the other ranks' engines. With ``data_parallel_size`` > 1 vLLM
    steps the engines in lockstep (every ``has_unfinished_requests`` and every forward is a collective over the
    data-parallel group, for MoE experts shared across ranks), so each rank would have to call ``generate`` as
    often as every other; here ranks sample their own share of prompts, one request per prompt, a count that
    differs between ranks. For a dense model nothing else needs the group: drop it."""
    engine = llm.llm_engine
    if engine.vllm_config.model_config.is_moe:      # its expert layers communicate over the group
        raise ValueError("one vLLM engine per rank needs a dense model; this one is a mixture of experts")
    engine.vllm_config.parallel_config.data_parallel_size = 1
    engine.dp_group = None
    engine.external_launcher_dp = False
