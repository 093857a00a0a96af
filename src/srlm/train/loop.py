"""What every training stage shares: optimizer, schedule, clipping, metrics, checkpoints and resume.

The stage files (`sft.py`, `kd.py`, `grpo.py`) keep their loops in view and call these helpers for
the bookkeeping. A resumable checkpoint holds the model (or adapter), optimizer, scheduler, RNG states and
the data position, written atomically, so killing a run and starting it again continues exactly.

Distributed runs are the same code under `torchrun` or `accelerate launch`:
- data parallel (default): every process holds the whole model; `sum_gradients` all-reduces the gradients
  once per step (one flat buffer), so accumulation and parallelism give the single-process gradient;
- FSDP (`SRLM_FSDP=1`, or an accelerate FSDP config, which sets `ACCELERATE_USE_FSDP=true`): torch's
  `fully_shard` (FSDP2) per decoder layer plus the root; gradients are reduce-scattered (summed) during
  backward, checkpoints gather full state dicts to rank 0. Full-parameter training only (no LoRA).

Optional logging sinks, read from the environment so configs stay backend-free: `SRLM_TENSORBOARD=DIR`
writes TensorBoard events, `SRLM_WANDB=1` logs to Weights & Biases (`WANDB_MODE=offline` works).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from srlm.faults import fault_point

# ------------------------------------------------------------------------------------------ optimizer


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norms (1-D tensors).

    The fused kernel (one pass over all parameters, CPU and CUDA) when every parameter is a plain float
    tensor; `foreach` otherwise (FSDP's sharded DTensors), never the per-parameter Python loop.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    params = decay + no_decay
    fusable = all(type(p) is torch.nn.Parameter and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                  and p.device.type in ("cpu", "cuda") for p in params)
    kind = {"fused": True} if fusable else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **kind)


def lr_factor(step: int, total: int, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio`; `step` counts completed updates."""
    warmup = int(round(warmup_ratio * total))
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(opt, cfg, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    )


def clip_and_step(model, opt, sched, max_grad_norm: float) -> float:
    """Clip gradients, step optimizer and schedule, zero gradients; return the pre-clip grad norm."""
    return float(clip_and_step_tensor(model, opt, sched, max_grad_norm))


def clip_and_step_tensor(model, opt, sched, max_grad_norm: float) -> torch.Tensor:
    """`clip_and_step` returning the norm as a tensor, so a loop can read it with its loss in one sync.

    `foreach` clipping is one fused pass; under FSDP the parameters are DTensors and the norm is reduced
    over all shards (a full tensor on every rank).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.detach()


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it; plain fp32 elsewhere (CPU bf16 is slower than fp32 there)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward: memory for ~30% more compute.

    The non-reentrant variant works when the inputs need no grad (frozen embeddings under LoRA).
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 name; a peft model forwards it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "config"):
        model.config.use_cache = False


def is_checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on, asked without transformers' deprecation warning."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))


def compile_requested(cfg) -> bool:
    """`torch.compile` of the decoder layers, when the config has `compile: true` or `SRLM_COMPILE=1`."""
    return bool(getattr(cfg, "compile", False)) or os.environ.get("SRLM_COMPILE", "0") == "1"


def compile_layers(model) -> int:
    """Compile each decoder layer (dynamic shapes: one compilation serves every batch and sequence length).

    Fusing the elementwise work around the matmuls (RMSNorm, rotary embedding, SiLU-and-multiply, residual
    adds) is where eager PyTorch loses time on small models. Measured on the bench's tiny model on a 2-core
    CPU it gained only a few percent per step (4,742 vs 4,442-4,562 tokens/s) for a one-time compilation of
    tens of seconds: worth trying on long runs and other hardware, not a default.
    The LM head and loss stay eager (their shapes depend on how many positions carry loss). Returns the
    number of layers compiled.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None) or []
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


# ------------------------------------------------------------------------------ two passes side by side

_SIDE_THREAD: ThreadPoolExecutor | None = None


def can_run_beside(device: torch.device) -> bool:
    """Whether `run_beside` can split this process's CPU threads between two passes (CPU, >= 2 threads)."""
    return device.type == "cpu" and torch.get_num_threads() >= 2


def run_beside(side: Callable[[], Any], main: Callable[[], Any], side_grad: bool = False) -> tuple[Any, Any]:
    """`side()` on a helper thread, without gradients unless `side_grad`, while `main()` runs on this one,
    each with half of torch's CPU threads; returns (side's result, main's result). `side` must not call
    `run_beside` itself (there is one helper thread).

    Why: two independent passes over small matrices scale poorly from one core to two: on the bench's tiny
    model on 2 cores the reference forward ran 1.7x and the policy's 1.5x faster on two threads than on
    one. Side by side, one core each, they overlap each other's serial work and skip the thread barrier
    of every op (which stalls whenever a core is busy elsewhere). GRPO runs its frozen reference beside
    pi_old's forward (bench update 0.728 against 0.756 s one after the other, 28 ms paired, 11 pairs),
    and each micro-batch's two halves side by side, backward included (see `grpo_update`). Each pass
    computes the same function as alone; with this machine's MKL the results were bitwise equal.
    """
    global _SIDE_THREAD
    if _SIDE_THREAD is None:  # one long-lived helper: its OpenMP thread team is made once
        _SIDE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srlm-side")
    total = torch.get_num_threads()
    half = max(1, total // 2)

    def side_job():
        torch.set_num_threads(half)
        with torch.set_grad_enabled(side_grad):
            return side()

    torch.set_num_threads(half)
    try:
        future = _SIDE_THREAD.submit(side_job)
        try:
            main_result = main()
        finally:
            side_result = future.result()  # waits even when main failed: never leave the side running
    finally:
        torch.set_num_threads(total)
    return side_result, main_result


# ------------------------------------------------------------------------------------- distributed


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


def all_reduce_sum(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


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


def fsdp_requested() -> bool:
    """FSDP when asked for by `SRLM_FSDP=1` or by an accelerate FSDP config (`ACCELERATE_USE_FSDP`)."""
    return os.environ.get("SRLM_FSDP", "0") == "1" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def shard_model(model, d: Dist):
    """Shard `model` with FSDP2 when requested and running in more than one process; else return it as is.

    Each decoder layer is its own unit (its parameters are gathered just for its forward and backward),
    the root holds the rest (embeddings, final norm, the tied head). Gradients are summed, not averaged,
    because the loss is already normalised by the whole step's token count.
    """
    if d.world == 1 or not fsdp_requested():
        return model
    from torch.distributed.fsdp import fully_shard

    from srlm.errors import UserError

    if hasattr(model, "peft_config"):
        raise UserError("FSDP with LoRA is not supported; LoRA models are small: use data parallel "
                        "(unset SRLM_FSDP / use configs/accelerate/ddp_*.yaml)")
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


# ------------------------------------------------------------------------------------------- metrics


class ExternalSinks:
    """TensorBoard and Weights & Biases, switched on from the environment, imported only when asked for.

    A missing package is one warning line, never a failed run: these are conveniences, metrics.jsonl is
    the record.
    """

    def __init__(self, run_dir: Path):
        self.tb = None
        self.wandb = None
        tb_dir = os.environ.get("SRLM_TENSORBOARD")
        if tb_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(tb_dir) / Path(run_dir).name))
            except ImportError:
                print("srlm: SRLM_TENSORBOARD is set but tensorboard is not installed; skipping it",
                      file=sys.stderr)
        if os.environ.get("SRLM_WANDB", "0") not in ("", "0"):
            try:
                import wandb

                self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "srlm"),
                                        name=Path(run_dir).name, dir=str(run_dir), reinit="finish_previous")
            except ImportError:
                print("srlm: SRLM_WANDB is set but wandb is not installed; skipping it", file=sys.stderr)

    def log(self, record: dict) -> None:
        step = int(record.get("step", 0))
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class MetricsLog:
    """Append-only `metrics.jsonl`, one JSON object per step, flushed as written.

    On resume, lines beyond the resumed step are dropped first, so the file always describes exactly the
    steps that the final weights went through.
    """

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.sinks = ExternalSinks(self.path.parent)
        kept = []
        if self.path.exists() and resume_step > 0:
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is gone too
        atomic_write_text(self.path, "".join(x + "\n" for x in kept))
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        if self.enabled:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
            self.sinks.log(record)

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            self.sinks.close()


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def progress_bar(total: int, desc: str, initial: int = 0, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


@dataclass
class Timer:
    """Accumulates wall seconds per named phase (generate / score / train ...)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Phase()


# ----------------------------------------------------------------------------------------- checkpoints


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the complete folder `tmp` in place of `folder` by renames. A kill at any moment leaves either
    the old folder, or the new one, or (between the two renames) none: never a mix of the two."""
    tmp, folder = Path(tmp), Path(folder)
    if not folder.exists():
        tmp.rename(folder)
        return
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_resume_checkpoint(folder: Path, model, optimizer, scheduler, step: int, extra: dict,
                           d: Dist | None = None) -> None:
    """Everything needed to continue at `step`, written to `folder` atomically.

    Without `d` it is called on the main process only and saves that process's RNG state. With `d` every
    process calls it: each one's RNG state is gathered (so dropout continues exactly on every rank), FSDP
    shards are gathered into full model and optimizer state dicts, and rank 0 writes.
    """
    folder = Path(folder)
    d = d or Dist()
    rngs = all_gather_objects(rng_state(), d)
    model_sd = full_state_dict(model, d)
    opt_sd = _full_optimizer_state(model, optimizer, d)
    if not d.main:
        return
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if model_sd is not None:
        model.save_pretrained(tmp / "model", state_dict=model_sd)
    else:
        model.save_pretrained(tmp / "model")  # a peft model writes only its adapter here
    fault_point("checkpoint:mid_write", step=step)
    torch.save(
        {"optimizer": opt_sd, "scheduler": scheduler.state_dict(), "step": step,
         "rng": rngs[0], "rng_per_rank": rngs, "extra": extra},
        tmp / "trainer_state.pt",
    )
    replace_folder(tmp, folder)


def _full_optimizer_state(model, optimizer, d: Dist) -> dict:
    if not d.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_resume_checkpoint(folder: Path, model, optimizer, scheduler, d: Dist | None = None) -> tuple[int, dict]:
    """Restore weights, optimizer, scheduler and RNG from `folder`; return (step, extra).

    Every process calls it (each restores its own RNG state when the checkpoint has one per rank).
    """
    from safetensors.torch import load_file

    d = d or Dist()
    folder = Path(folder)
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    model_dir = folder / "model"
    if (model_dir / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(model_dir / "adapter_model.safetensors")))
    else:
        weights = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            weights.update(load_file(str(f)))
        if d.sharded:
            _load_sharded(model, optimizer, weights, state["optimizer"])
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            # tied embeddings are saved once: lm_head may legitimately be missing
            real_missing = [k for k in missing if "lm_head" not in k]
            if real_missing or unexpected:
                raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {real_missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
    if not d.sharded:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("rng_per_rank")
    set_rng_state(per_rank[d.rank] if per_rank and d.rank < len(per_rank) else state["rng"])
    return int(state["step"]), state.get("extra", {})


def _load_sharded(model, optimizer, weights: dict, opt_state: dict) -> None:
    """Scatter full model and optimizer state dicts (identical on every rank) into FSDP shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" not in weights:
        for k in list(weights):
            if k.endswith("embed_tokens.weight"):
                weights["lm_head.weight"] = weights[k]
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=opts)
    set_optimizer_state_dict(model, optimizer, opt_state, options=opts)
