"""Attention for training forwards on CPU: plain matrix products when the keys are short.

transformers' `sdpa` backend repeats the key/value heads of grouped-query attention whenever there is a
padding mask (always, in a batch of rollouts) and PyTorch's CPU flash kernel is tuned for long sequences.
For short ones (RL
completions on their prompt's cache, short SFT examples) three products and a softmax, with each key/value
head shared by its group of query heads instead of copied, are faster: one layer's attention forward plus
backward on the GRPO bench's shapes (32 rows x 64 queries x 123 keys, 4 heads on 2) took 9-12 ms against
16-20 ms, and the whole policy forward plus backward of a bench step 581 ms against 607 ms (medians of 10
alternations, 2-core CPU). With long keys the flash kernel wins (at 512 keys it is twice as fast), so
longer keys, GPUs, dropout and anything unusual go to transformers' own `sdpa` function.
tests/unit/test_attention.py checks the values and gradients against sdpa.

`use_short_key_attention(model)` switches a CPU model from `sdpa` to this; the switch is not saved with
the model (checkpoints keep saying `sdpa`).
"""

from __future__ import annotations

import torch

NAME = "srlm_short_keys"
MAX_KEYS = 256  # measured crossover: flash wins from about 300-500 keys on
MAX_SCORES = 1 << 24  # score elements per layer kept for the backward pass (64 MB in fp32)


def short_key_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    """transformers attention function: query [B, H, S, D], key/value [B, Hkv, W, D], `attention_mask` a
    bool (True = may attend) or additive [B, 1, S, W] mask or None. Returns ([B, S, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, s, d = query.shape
    hkv, w = key.shape[1], key.shape[2]
    unusual = (kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
               or kwargs.get("cache") is not None or kwargs.get("sliding_window") is not None)
    if (query.device.type != "cpu" or w > MAX_KEYS or b * h * s * w > MAX_SCORES or h % hkv or unusual
            or (dropout and module.training)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    group = h // hkv
    scale = scaling if scaling is not None else d ** -0.5
    # query heads j*group .. (j+1)*group-1 share key/value head j: multiply them as one block of rows
    q = (query * scale).reshape(b, hkv, group * s, d)  # [B, Hkv, G*S, D]
    scores = torch.matmul(q, key.transpose(-1, -2)).view(b, hkv, group, s, w)  # [B, Hkv, G, S, W]
    bias = _additive_mask(attention_mask, s, w, query, is_causal)  # [B or 1, 1, S, W] or None
    if bias is not None:
        scores = scores + bias[:, :, None]
    probs = torch.softmax(scores, dim=-1).view(b, hkv, group * s, w)
    out = torch.matmul(probs, value).view(b, h, s, d)  # [B, H, S, D]
    return out.transpose(1, 2).contiguous(), None  # [B, S, H, D]


def _additive_mask(mask, s: int, w: int, query: torch.Tensor, is_causal) -> torch.Tensor | None:
    """0 where a query may attend and the dtype's lowest finite value elsewhere (not -inf: a padding query
    that may attend nowhere gets finite, ignored outputs instead of NaNs that would poison the backward)."""
    low = torch.finfo(query.dtype).min
    if mask is None:
        if not (is_causal if is_causal is not None else True) or s == 1:
            return None
        # causal, queries are the last s of the w positions
        allowed = torch.arange(w, device=query.device)[None, :] <= torch.arange(w - s, w, device=query.device)[:, None]
        mask = allowed[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, low)
    return mask.to(query.dtype)


def use_short_key_attention(model) -> bool:
    """Switch a CPU model that uses `sdpa` to `short_key_attention` (which hands long keys back to sdpa).
    Returns whether it switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if next(model.parameters()).device.type != "cpu" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(NAME, short_key_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # same masks as sdpa: bool [B, 1, S, W]
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, ImportError):
        return False
    return config._attn_implementation == NAME
