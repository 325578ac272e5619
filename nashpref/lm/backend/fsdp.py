"""Data-parallel backends under torchrun: FSDP2 (``fully_shard``) and DDP-style replication.

Both take a rank's share of each round's prompt groups; what they differ in is who holds what:

* ``fsdp`` — every decoder layer and the root of the policy are wrapped with
  ``torch.distributed.fsdp.fully_shard``: parameters, gradients and AdamW's two moments live as 1/N shards
  (DTensors) on each rank; a forward all-gathers one layer at a time and the backward reduce-scatters its
  gradient (averaged over ranks). On a GPU the parameters are kept in fp32 and computed in bf16 with fp32
  reduction (``MixedPrecisionPolicy``); on a CPU everything is fp32.
* ``ddp`` — every rank holds the whole model and optimizer; the gradients are all-reduced (averaged, in one
  flat buffer) before the step. No wrapper module, so the policy keeps its transformers attributes.

Checkpoints go through ``torch.distributed.checkpoint`` (DCP): every rank writes its shards into a staging
directory, rank 0 adds the loop state, each rank its RNG state, and the staging directory is renamed into place
only when all of that is on disk. DCP reshards on load, so a run saved with N ranks resumes with M.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nashpref.lm.backend import distributed as pg

T = TypeVar("T")

__all__ = ["DataParallelBackend", "FSDPBackend", "DDPBackend", "STATE_FILE", "shard_layers"]

STATE_FILE = "checkpoint.pt"     # the loop state, where nashpref.lm.checkpoints looks for it


def _module(model: nn.Module) -> nn.Module:
    """The transformers model itself, or the one a policy wrapper (an LMPolicy) keeps as ``.model``."""
    if hasattr(model, "config"):
        return model
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class DataParallelBackend:
    """What DDP and FSDP share: the process group, the prompt shares, the reductions and the checkpoints."""

    kind = "data-parallel"
    keyed = True            # draws per (round, prompt): the same run at any world size
    publishes = True        # save() is collective and stages + renames the directory itself

    def __init__(self, device: str | None = None, timeout: float = pg.DEFAULT_TIMEOUT):
        self.owns_group = not dist.is_initialized()     # close() ends only a group this backend started
        self.device = pg.init_from_env(device, timeout)
        self.rank, self.world_size = pg.rank(), pg.world_size()
        self.steps = 0          # optimizer steps and loads: tells samplers holding a copy that weights moved

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- data -----------------------------------------------------------------------------------------------
    def shard(self, items: Sequence[T]) -> Sequence[T]:
        return pg.shard_items(items, self.world_size, self.rank)

    def loss_scale(self, count: float | None) -> float:
        if count is None:
            return float(self.world_size)
        total = pg.reduce_sum({"count": count})["count"]
        return self.world_size * max(count, 1.0) / max(total, 1.0)

    def reduce(self, metrics: dict[str, float], count: float | None = None) -> dict[str, float]:
        return pg.reduce_mean(metrics, count)

    def reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        return pg.reduce_sum(values)

    def gather(self, rows: list) -> list:
        return pg.gather_rows(rows)

    def broadcast(self, value):
        return pg.broadcast_object(value)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """End the group after a successful run (every rank calls it). The barrier first: in CI a rank that
        destroyed its gloo group while its peer was still writing files aborted ("terminate called without an
        active exception")."""
        if dist.is_initialized():
            dist.barrier()
        if self.owns_group and dist.is_initialized():
            _leave_vllm_groups()              # vLLM's teardown may end the default group itself
        if self.owns_group and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except (RuntimeError, ValueError):   # vLLM's external launcher leaves the group unknown to destroy
                pass

    # ---- training -------------------------------------------------------------------------------------------
    def make_optimizer(self, params, lr: float, weight_decay: float, beta1: float = 0.9) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay,
                                 betas=(beta1, 0.999))

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def _clip(self, params: list[Tensor], max_grad_norm: float | None) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm is not None else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> dict[str, float]:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._synchronize(params)
        norm = self._clip(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {"grad_norm": norm}

    def _synchronize(self, params: list[Tensor]) -> None:
        """Make the gradients the mean over ranks (FSDP's backward already did)."""

    # ---- weights --------------------------------------------------------------------------------------------
    def full_weights(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """(name, full tensor) for every entry of the transformers state dict, one at a time: a sharded tensor
        is all-gathered just before it is yielded (every rank must walk the whole iterator)."""
        for name, tensor in _module(model).state_dict().items():
            yield name, (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach()

    def save(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """DCP checkpoint of the model and optimizer shards, ``state`` (rank 0's) and every rank's RNG state,
        written into ``.NAME.staging`` and renamed to ``directory`` once complete."""
        import torch.distributed.checkpoint as dcp

        directory = Path(directory)
        staging = directory.parent / f".{directory.name}.staging"
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.barrier()
        dcp.save(_dcp_state(model, optimizer), checkpoint_id=staging)
        _save_file(rng_state(), staging / f"rng-{self.rank}.pt")
        if self.is_main:
            _save_file(state, staging / STATE_FILE)
        self.barrier()
        if self.is_main:
            if directory.exists():
                shutil.rmtree(directory)
            os.rename(staging, directory)
            _fsync(directory.parent)
        self.barrier()

    def load(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Restore the model and optimizer (resharded to this world size), this rank's RNG state (rank 0's
        when the checkpoint had fewer ranks), and return the loop state."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        directory = Path(directory)
        holder = _dcp_state(model, optimizer)
        dcp.load(holder, checkpoint_id=directory)
        set_state_dict(_module(model), optimizer, model_state_dict=holder["model"],
                       optim_state_dict=holder["optimizer"], options=_options())
        own = directory / f"rng-{self.rank}.pt"
        set_rng_state(torch.load(own if own.exists() else directory / "rng-0.pt", weights_only=False))
        self.steps += 1
        return torch.load(directory / STATE_FILE, weights_only=False)


class FSDPBackend(DataParallelBackend):
    """FSDP2: parameters, gradients and optimizer state sharded over the ranks."""

    kind = "fsdp"

    def prepare(self, policy: nn.Module, reference: nn.Module | None) -> None:
        """Shard the policy's transformers model in place (every decoder layer, then the root). The frozen
        reference is only placed on the device: it is never trained, and its forwards (reference samples,
        Nash-MD's mixture, log-probs) run a data-dependent number of times per rank, which a sharded module
        cannot (each of its forwards is a collective)."""
        model = _module(policy)
        model.to(self.device)
        lora = any(not p.requires_grad for p in model.parameters())
        if self.device.type == "cuda" and lora:
            model.float()                   # the base is shared with the copy and the reference: one dtype
        if model is not policy and hasattr(policy, "frozen"):
            attach_twin(policy, self)       # in the dtype the model was loaded in (bf16 on a GPU)
        if self.device.type == "cuda":
            model.float()                   # fp32 master shards; MixedPrecisionPolicy computes in bf16
        shard_layers(model, self.device)
        if reference is not None:
            _module(reference).to(self.device)


class DDPBackend(DataParallelBackend):
    """DDP semantics: a full replica per rank, gradients averaged over ranks before every step."""

    kind = "ddp"

    def prepare(self, policy: nn.Module, reference: nn.Module | None) -> None:
        model = _module(policy)
        model.to(self.device)
        with torch.no_grad():               # every rank starts from rank 0's weights
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
        if reference is not None:
            _module(reference).to(self.device)

    def _synchronize(self, params: list[Tensor]) -> None:
        if self.world_size == 1 or not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
            offset += p.grad.numel()


def _leave_vllm_groups() -> None:
    """End the groups a per-rank vLLM engine made on top of ours (vLLM's own teardown, which also ends the default
    group): left alone, the engine's finalizer tries it at exit, after our group is gone, and prints a traceback."""
    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is not None and state.model_parallel_is_initialized():
        segments = _cpu_shm_segments(state)
        state.destroy_model_parallel()
        state.destroy_distributed_environment()
        for path in segments:
            with contextlib.suppress(FileNotFoundError):     # a peer of the group may have unlinked it first
                path.unlink()


def _cpu_shm_segments(state) -> list[Path]:
    """The shared-memory files of vLLM's CPU all-reduce for this process's tensor/pipeline-parallel groups (x86
    builds with AVX512). vLLM names them after the group's ranks, not the run, and only a C++ destructor at
    interpreter exit unlinks them, which a finished rank's quick exit skips: left in /dev/shm, they made the next
    engine on the same ranks fail ("create shm in SHMManager failed. errno: 17")."""
    import glob

    paths = []
    for group in vars(state).values():
        name = getattr(getattr(getattr(group, "device_communicator", None), "dist_module", None), "group_name", None)
        if isinstance(group, state.GroupCoordinator) and isinstance(name, str):
            pattern = os.path.join("/dev/shm", glob.escape(name.lstrip("/")) + "_*")   # shm_open drops leading "/"
            paths += [Path(found) for found in glob.glob(pattern)]
    return paths


def attach_twin(policy: nn.Module, backend: DataParallelBackend) -> nn.Module:
    """Give a language-model policy (about to be sharded) an unsharded copy that samples for it.

    A sharded module's every forward is a collective, but generation runs a data-dependent number of forwards
    per rank (responses end at different lengths). So ``frozen()``, ``sample``, ``sample_mixture`` and
    ``full_state`` of the policy go to the copy, refreshed from the shards (all ranks together, one
    parameter at a time) whenever the trainable weights changed since the last refresh; the training forward
    and backward use the shards. The copy is what a vLLM engine would hold; it holds no gradient or optimizer
    state. With LoRA it holds only its own adapter: the frozen base tensors are the reference's."""
    import copy

    keep = {id(policy.tokenizer): policy.tokenizer, id(policy.sampler): policy.sampler}
    # LoRA: the frozen base tensors are shared (not copied) with the copy, as they already are with the reference
    # (the base with the adapters off); sharding gives the policy its own shards and leaves these whole.
    keep |= {id(p): p for p in policy.parameters() if not p.requires_grad}
    twin = copy.deepcopy(policy, memo=keep).requires_grad_(False)
    seen: list[tuple] = [tuple(p._version for p in policy.parameters())]

    def synced():
        versions = tuple(p._version for p in policy.parameters())
        if versions != seen[0]:
            copies = dict(twin.named_parameters())
            with torch.no_grad():
                for name, param in policy.named_parameters():
                    if param.requires_grad:
                        full = param.full_tensor() if hasattr(param, "full_tensor") else param
                        copies[name].copy_(full.detach())
            seen[0] = versions
        object.__setattr__(twin, "provenance", policy.provenance)     # its samples are the policy's, in metrics
        return twin

    # Plain attributes (object.__setattr__): the copy must not become a submodule of the policy.
    object.__setattr__(policy, "twin", synced)
    object.__setattr__(policy, "frozen", lambda: synced().frozen())
    object.__setattr__(policy, "sample", lambda *args, **kwargs: synced().sample(*args, **kwargs))
    object.__setattr__(policy, "sample_mixture", lambda *args, **kwargs: synced().sample_mixture(*args, **kwargs))
    object.__setattr__(policy, "full_state", lambda: synced().full_state())
    return twin


def shard_layers(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every block named in transformers' ``_no_split_modules`` (the decoder layers), then the
    root; bf16 compute with fp32 gradient reduction on CUDA, plain fp32 on CPU."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (pg.world_size(),))
    options: dict = {"mesh": mesh}
    if device.type == "cuda":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, **options)
    fully_shard(model, **options)
    return model


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)     # frozen weights come from the model path


def _dcp_state(model: nn.Module, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(_module(model), optimizer, options=_options())
    return {"model": model_state, "optimizer": optimizer_state}


def rng_state() -> dict:
    """This process's torch RNG states (CPU, and every CUDA device when there is one)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
            else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_file(value, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(value, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
