"""The model cut before its output layer, so that the losses can run the output layer in chunks.

`plain_head(model)` is the output layer as (weight [V, E], bias) when the logits are exactly that linear
map of the decoder's last hidden state (Llama-family models, with or without LoRA on the layers below);
`None` otherwise (logit soft-capping or scaling, LoRA or trainable tokens on the output layer, sharded
parameters), and the callers then keep the plain full-logits path. `decoder(model)` is the module that
produces those hidden states (peft wrappers forward to it, adapters included).
"""

from __future__ import annotations

import torch

# config fields of architectures whose logits are not just linear(hidden): those keep the full-logits path
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def decoder(model):
    return model.get_decoder()


def plain_head(model) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [V, E], bias [V] or None) of the output layer, or None when the logits are not linear(hidden)."""
    if any("FSDP" in c.__name__ or "FullySharded" in c.__name__ for c in type(model).__mro__):
        return None  # sharded: only the wrapper's own forward gathers the parameters
    get_head, get_decoder = getattr(model, "get_output_embeddings", None), getattr(model, "get_decoder", None)
    if get_head is None or get_decoder is None:
        return None
    head = get_head()
    if type(head) is not torch.nn.Linear or type(head.weight) is not torch.nn.Parameter or get_decoder() is None:
        return None
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, name, None) not in (None, 0, 0.0, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    return head.weight, head.bias
