"""Distributed training helpers: the same code runs plainly or under `torchrun` / `accelerate launch`.

- data parallel (default): every process holds the whole model; `sum_gradients` all-reduces the gradients
  once per step (one flat buffer), so accumulation and parallelism give the single-process gradient;
- FSDP (a stage's `fsdp: true`, which `SRLM_FSDP=1` or an accelerate FSDP config, which sets
  `ACCELERATE_USE_FSDP=true`, turn on at load time): torch's
  `fully_shard` (FSDP2) per decoder layer plus the root; gradients are reduce-scattered (summed) during
  backward, checkpoints gather full state dicts to rank 0. Full-parameter training only (no LoRA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """Where this process sits under torchrun / accelerate launch (world 1 when run plainly).

    `sharded` is set by `shard_model` when FSDP owns the gradient reduction.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group the launcher set up (gloo on CPU, nccl on GPU); no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def close_process_group(together: bool) -> None:
    """Leave the launcher's process group at the end of a command, on every rank (no-op without one).

    `together`: the command finished on this rank (stage failures included), so every rank comes to a
    barrier first and no rank exits while a peer still reads from it (gloo aborts such a reader: a SIGABRT
    of rank 1 once in CI). After an error a peer may never reach a barrier: close without one (the
    launcher then ends the other ranks)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()


def sum_gradients(model, d: Dist) -> None:
    """Sum gradients across processes. Losses are normalised by the whole step's token count (known to
    every rank from the data plan), so the sum is exactly the single-process gradient. One all-reduce of
    one flat buffer per step, instead of DDP hooks, keeps the stage loops plain PyTorch with no no_sync
    bookkeeping; under FSDP the reduce-scatter in backward already summed them."""
    if d.world == 1 or d.sharded:
        return
    import torch.distributed as dist

    grads = []
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])  # [sum of numels]
        dist.all_reduce(flat)
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def all_reduce_sums(d: Dist, *values: float) -> list[float]:
    """Sum numbers over processes in one all-reduce (identity for one process)."""
    if d.world == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_sum(value: float, d: Dist) -> float:
    """One number summed over processes (`all_reduce_sums` of one)."""
    return all_reduce_sums(d, value)[0]


def broadcast_parameters(model, d: Dist) -> None:
    """Start every process from rank 0's weights (before sharding: FSDP shards what each rank holds)."""
    if d.world == 1 or d.sharded:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, 0)


def all_gather_objects(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order (picklable objects; small ones: RNG states, counts)."""
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def shard_model(model, d: Dist, requested: bool):
    """Shard `model` with FSDP2 when `requested` (the stage's `fsdp`) and running in more than one process;
    else return it as is.

    Each decoder layer is its own unit (its parameters are gathered just for its forward and backward),
    the root holds the rest (embeddings, final norm, the tied head). Gradients are summed, not averaged,
    because the loss is already normalised by the whole step's token count.
    """
    if d.world == 1 or not requested:
        return model
    from torch.distributed.fsdp import fully_shard

    from srlm.errors import UserError

    if hasattr(model, "peft_config"):
        raise UserError("FSDP with LoRA is not supported; LoRA models are small: use data parallel "
                        "(fsdp: false; unset SRLM_FSDP / use configs/accelerate/ddp_*.yaml)")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise UserError(f"FSDP: cannot find the decoder layers of {type(model).__name__} (model.model.layers)")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for m in model.modules():
        if hasattr(m, "set_gradient_divide_factor"):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    d.sharded = True
    return model


def gradient_sync(model, d: Dist, enabled: bool) -> None:
    """FSDP only: reduce-scatter gradients on the last micro-batch of a step, not on each one."""
    if d.sharded:
        model.set_requires_gradient_sync(enabled)


def full_state_dict(model, d: Dist) -> dict | None:
    """Under FSDP, the whole model's state dict on CPU gathered from the shards (a collective: every rank
    calls it), tied duplicates dropped; None otherwise (saving then reads the unsharded model itself)."""
    if not d.sharded:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        for key in getattr(model, "_tied_weights_keys", None) or {}:  # saved once, as the HF folder expects
            state.pop(key, None)
    return state
