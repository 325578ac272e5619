"""torch.distributed plumbing shared by the data-parallel backends (DDP and FSDP2).

* :func:`init_from_env` joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``) with gloo on CPU or nccl on GPU, and a **timeout**: a collective that waits on
  a rank that died or hangs fails after it instead of blocking the job forever;
* :func:`shard_bounds` / :func:`shard_items` cut a round's prompt groups into contiguous, near-equal shares, one
  per rank (a group is never split: SPPO's win-rates, INPO/EGPO/DNO pair statistics and Nash-MD's mixture
  samples need all of a prompt's samples on one rank);
* :func:`reduce_mean`, :func:`reduce_sum` and :func:`gather_rows` are the three collectives the loop needs.

With one process (no torchrun) every helper degrades to the identity, so the same calls run everywhere.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from nashpref.errors import BadInput, NashprefError

T = TypeVar("T")

__all__ = ["DistributedError", "launched_by_torchrun", "restarted_by_torchrun", "init_from_env", "rank", "world_size",
           "shard_bounds", "shard_items", "reduce_sum", "reduce_mean", "gather_rows", "broadcast_object",
           "describe_failure"]

DEFAULT_TIMEOUT = 600.0


class DistributedError(NashprefError):
    """A peer process died or stopped answering: one line, exit status non-zero (raised on the survivors)."""


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher with the same environment contract) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def restarted_by_torchrun() -> bool:
    """True in the workers torchrun starts again after a failure (``--max-restarts``): their run must continue
    from its last checkpoint rather than start over."""
    return launched_by_torchrun() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def init_from_env(device: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> torch.device:
    """Join the process group from torchrun's environment (once) and return this rank's device.

    gloo on CPU, nccl on CUDA (``cuda:LOCAL_RANK``). ``timeout`` (seconds) bounds every collective; for nccl the
    watchdog then aborts the communicator, so a dead rank ends the job instead of hanging it.
    """
    if not launched_by_torchrun():
        raise BadInput("--backend ddp/fsdp needs the processes torchrun starts: torchrun --nproc_per_node N "
                        "-m nashpref train ... (or --backend single for one process)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    target = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(target)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if not dist.is_initialized():
        options = {"device_id": target} if cuda else {}
        store = _restart_store(timeout)
        if store is not None:
            options |= {"store": store, "rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"])}
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout), **options)
    return target


def _restart_store(timeout: float):
    """After a torchrun restart, the agent's store under a key prefix of its own, else None (the default store).

    torchrun's agent keeps one store for all attempts (TORCHELASTIC_USE_AGENT_STORE), so restarted ranks would
    read the dead ranks' gloo/nccl addresses and fail to connect (pytorch issue 135712). Keyed by the restart
    count, which every agent advances together when a worker fails."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                           is_master=False, timeout=timedelta(seconds=timeout))
    return dist.PrefixStore(f"nashpref/restart-{restart}", shared)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def shard_bounds(count: int, ranks: int, index: int) -> tuple[int, int]:
    """[start, stop) of rank ``index``'s contiguous share of ``count`` items: the first ``count % ranks`` ranks
    get one more, so shares differ by at most one and concatenating them in rank order gives the whole."""
    if ranks < 1 or not 0 <= index < ranks:
        raise ValueError(f"shard_bounds: rank {index} of {ranks}")
    base, extra = divmod(count, ranks)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def shard_items(items: Sequence[T], ranks: int | None = None, index: int | None = None) -> Sequence[T]:
    """This rank's contiguous share of ``items`` (slices keep tensors tensors and lists lists)."""
    ranks = world_size() if ranks is None else ranks
    index = rank() if index is None else index
    start, stop = shard_bounds(len(items), ranks, index)
    return items[start:stop]


def _all_reduce(values: list[float], op) -> list[float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=op)
    return tensor.cpu().tolist()


def reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Sum of every value over ranks (every rank must pass the same keys)."""
    keys = sorted(values)
    return dict(zip(keys, _all_reduce([float(values[k]) for k in keys], dist.ReduceOp.SUM)))


def reduce_mean(values: dict[str, float], count: float | None = None) -> dict[str, float]:
    """Mean of every value over ranks, weighted by ``count`` (this rank's number of items) when given: the
    weighted mean equals the single-process mean over the union of the ranks' items."""
    weight = 1.0 if count is None else float(count)
    keys = sorted(values)
    sums = _all_reduce([weight * float(values[k]) for k in keys] + [weight],
                       dist.ReduceOp.SUM)
    total = sums[-1]
    return {k: (s / total if total else 0.0) for k, s in zip(keys, sums[:-1])}


def gather_rows(rows: list) -> list:
    """Every rank's rows, concatenated in rank order (on every rank; picklable rows)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(rows)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


def broadcast_object(value: T, source: int = 0) -> T:
    """Rank ``source``'s ``value`` on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def describe_failure(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` is a collective that failed because a peer died or timed out, else None."""
    text = f"{type(exc).__name__}: {exc}"
    markers = ("Connection closed by peer", "Connection reset", "Broken pipe", "timed out", "Timeout",
               "NCCL", "DistBackendError", "Socket", "recvBytes", "connection", "gloo")
    if not isinstance(exc, (RuntimeError, OSError, ConnectionError)) or not any(m in text for m in markers):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = re.sub(r"^\[[^\]]*:\d+\]\s*", "", first)        # gloo's "[.../pair.cc:553] " source location
    return (f"rank {rank()}: a collective with the other ranks failed (a rank died, or stopped answering within "
            f"the timeout): {first[:200]}")
