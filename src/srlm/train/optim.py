"""The optimizer and its schedule, clipping and the step, and how the model trains (autocast, gradient
checkpointing, compiled layers): what every training stage sets up the same way."""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from srlm.errors import UserError


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


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 products beat fp32."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast_on(device: torch.device, setting: bool | None = None) -> bool:
    """Whether training runs under bf16 autocast (`bf16_autocast` of OptimConfig): None, on GPUs that support
    bf16 only (on the tiny model's small matrices CPU bf16 is slower than fp32); True, also on a CPU with bf16
    instructions (the real model's large matrix products run about twice as fast); False, never."""
    if setting is False:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if setting and device.type == "cpu":
        if not cpu_has_bf16():
            raise UserError("bf16_autocast: true, but this CPU has no bf16 instructions (avx512_bf16 or amx_bf16); "
                            "leave it unset (null) or set it false")
        return True
    return False


def autocast(device: torch.device, setting: bool | None = None):
    """bf16 autocast where `bf16_autocast_on` says so; plain fp32 elsewhere."""
    if bf16_autocast_on(device, setting):
        return torch.autocast(device.type, dtype=torch.bfloat16)
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
    """`torch.compile` of the decoder layers, when the stage's config has `compile: true` (`SRLM_COMPILE=1`
    sets it at load time, so the run's config.yaml records it)."""
    return bool(getattr(cfg, "compile", False))


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
