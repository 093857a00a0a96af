"""Process memory: an allocator setting that lets freed activations leave the process, the estimate a
training stage or an evaluation prints when it starts, and the measured peak that its manifest or
summary.json records.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

import torch

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_configured = False


# A model this large is where activations, not weights, set a training step's peak memory; below it the
# page faults of fresh mmapped blocks cost more than the memory saved (see return_freed_memory).
RETURN_FREED_MIN_PARAMS = 50_000_000


def return_freed_memory_for(model) -> None:
    """`return_freed_memory` for a model of `RETURN_FREED_MIN_PARAMS` parameters or more, else nothing."""
    if sum(p.numel() for p in model.parameters()) >= RETURN_FREED_MIN_PARAMS:
        return_freed_memory()


ONEDNN_PRIMITIVES = 64


def return_freed_memory() -> None:
    """On glibc (Linux), serve every allocation of 1 MB or more straight from the kernel (mmap), so that it
    goes back to the kernel when freed; everywhere, bound oneDNN's primitive cache (`ONEDNN_PRIMITIVES`).
    Once per process.

    The price: every such allocation is a fresh mapping whose pages the kernel zero-fills on first touch.
    On the tiny bench model (`benchmarks/sft_throughput.py`, 151k-vocabulary logits, one thread) an SFT
    step was 1.1-4x slower with it (three interleaved pairs on a loaded host), so training stages turn it
    on only for real-sized models (`return_freed_memory_for`).

    Why: glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
    activation-sized tensors come from the heap, where freed blocks fragment and stay counted in the
    process. A training step allocates and frees thousands of such tensors, and LoRA's many small adapter
    tensors between them fragment most: SmolLM2-135M SFT (batch 8, GSM8K) peaked at 4.96 GB with LoRA
    (no dropout) against 3.79 GB for full fine-tuning; with the threshold fixed, 3.11 and 3.41 GB.
    """
    global _configured
    if _configured:
        return
    _configured = True
    # oneDNN (bf16 products on CPU) keeps a compiled primitive per operand shape, up to 1024 by default. A
    # decode step's attention has a new width every step, so the cache only grows: SmolLM2-135M, 64 GSM8K
    # rows in bf16 with a 0.3 GB KV budget peaked at 1.52 GiB, 1.36 with 64 (read when first used; a value
    # the user set stays)
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVES))
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc (musl): nothing to set
        pass


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring a new peak (`peak_memory_gb`): CUDA's allocator statistics; on Linux, the process's
    peak resident set (VmHWM, which writing 5 to /proc/self/clear_refs sets to the current RSS). Why: stages
    run one after another in one `srlm run` process, and `ru_maxrss` only grows, so each stage would record
    the largest peak of every stage before it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or /proc read-only: the peak stays the process's so far
        pass


def peak_memory_gb(device: torch.device) -> float:
    """GiB: on CUDA, the most allocated since `reset_peak_memory`; on a CPU, the process's peak resident set
    since `reset_peak_memory` (VmHWM), or since the process started where /proc has none (`ru_maxrss`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _bytes(numel: int, dtype: torch.dtype) -> float:
    return numel * torch.empty((), dtype=dtype).element_size()


def training_estimate(model, tokens: int, extra_weights=None, checkpointing: bool = False,
                      low_precision: bool = False) -> dict[str, float]:
    """GB by part for a training step over `tokens` tokens per micro-batch: the weights (with those of
    `extra_weights`, a model such as GRPO's frozen reference, in its own dtypes), gradients and AdamW's two
    moments of the trainable parameters, and the activations autograd keeps (`activation_bytes_per_token`;
    `low_precision`: under bf16 autocast). An estimate, not a bound."""
    params = list(model.parameters())
    extra = list(extra_weights.parameters()) if extra_weights is not None else []
    weights = sum(_bytes(p.numel(), p.dtype) for p in params + extra)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    gb = 1024 ** 3
    return {"weights": weights / gb, "gradients + AdamW": 3 * trainable * 4 / gb,
            "activations": tokens * activation_bytes_per_token(model, checkpointing, low_precision) / gb}


def activation_bytes_per_token(model, checkpointing: bool = False, low_precision: bool = False) -> int:
    """Bytes autograd keeps per token of a training forward: about 7 hidden-size and 3 MLP-size vectors per
    layer in fp32; under bf16 autocast (`low_precision`) the products' inputs it keeps are 2-byte copies, so
    only the residual stream's 2 (the norms' inputs) stay 4 bytes; with gradient checkpointing one
    hidden-size fp32 vector per layer. Counting bf16 activations at 4 bytes made micro-batches half the
    size they can be, each paying its fixed costs (docs/real-model.md)."""
    cfg = getattr(model, "config", None)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    mlp = int(getattr(cfg, "intermediate_size", 4 * hidden) or 4 * hidden)
    if checkpointing:
        return layers * hidden * 4
    if low_precision:
        return layers * (2 * hidden * 4 + (5 * hidden + 3 * mlp) * 2)
    return layers * (7 * hidden + 3 * mlp) * 4


# Activations one micro-batch may keep when `micro_batch_tokens` is not set. On a CPU: 1 GiB, so that a
# ~0.1-0.5B model's SFT or GRPO step fits a laptop beside its weights and AdamW (SmolLM2-135M: ~1,000 tokens
# per micro-batch; the tiny demo model: ~27,000, more than any of its batches). On a GPU: a quarter of it.
CPU_ACTIVATION_BUDGET = 1024 ** 3


def micro_batch_token_budget(model, device: torch.device, checkpointing: bool = False,
                             low_precision: bool = False) -> int:
    """The default `micro_batch_tokens`: the tokens whose estimated activations fit the budget above."""
    budget = CPU_ACTIVATION_BUDGET
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory // 4
    return max(1, budget // max(1, activation_bytes_per_token(model, checkpointing, low_precision)))


def describe_estimate(stage: str, parts: dict[str, float], tokens: int | str,
                      recorded_in: str = "the manifest") -> str:
    """One line; `tokens`: tokens per micro-batch, or a phrase saying what the estimate is for;
    `recorded_in`: where the measured peak will be (a stage's manifest, an evaluation's summary.json)."""
    total = sum(parts.values())
    detail = ", ".join(f"{name} {gb:.2f}" for name, gb in parts.items())
    per = f"{tokens} tokens per micro-batch" if isinstance(tokens, int) else tokens
    return f"{stage}: memory estimate {total:.1f} GB ({detail}; {per}); {recorded_in} records the measured peak"


def kv_bytes_per_token(model, dtype: torch.dtype | None = None) -> int:
    """Bytes one token occupies in a decoding KV cache: keys and values of every layer, in `dtype` (default:
    the model's)."""
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    dtype = dtype or next(model.parameters()).dtype
    return 2 * int(cfg.num_hidden_layers) * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def rows_within(budget_gb: float, bytes_per_row: int, most: int) -> int:
    """How many rows of `bytes_per_row` each fit in `budget_gb` (at least 1, at most `most`)."""
    return max(1, min(most, int(budget_gb * 1024 ** 3 // max(1, bytes_per_row))))


def eval_estimate(model, rows: int, columns: int, lean_copies_gb: float = 0.0,
                  cache_dtype: torch.dtype | None = None) -> dict[str, float]:
    """GB by part for decoding `rows` rows of up to `columns` tokens each (prompt + new tokens): the
    weights, the lean forward's own weight copies (`engines.lean.lean_copy_bytes`; left out when it makes
    none), and the KV cache. An estimate of what the tensors hold, not of the interpreter and libraries
    (about 0.25 GB on CPU)."""
    gb = 1024 ** 3
    weights = sum(_bytes(p.numel(), p.dtype) for p in model.parameters())
    copies = {"lean copies": lean_copies_gb} if lean_copies_gb else {}
    return {"weights": weights / gb, **copies, "KV cache": rows * columns * kv_bytes_per_token(model, cache_dtype) / gb}
