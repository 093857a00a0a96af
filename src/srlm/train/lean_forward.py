"""A lean training forward for GRPO batches: the completion logits of a `RolloutBatch` for Llama-family
models (Qwen2, Qwen3, Llama, Mistral without a sliding window), with autograd, from the live parameters.

Why: on a small model on CPU, GRPO's training passes (policy forward and backward, reference forward) are
mostly many element-wise ops over large activations, and the transformers module stack adds its own
(mask building, repeated keys for grouped-query attention, per-layer Python). This computes the same
function with fewer, larger ops: prompt and completion rows go through each projection in one product,
and attention is grouped-query sdpa that never repeats keys. Each projection runs on its own parameter:
weights joined per call into one q/k/v (or gate/up) product were a copy that autograd kept until the
backward, in every pass (docs/real-model.md has what it cost). On the bench's tiny
model (2 CPU cores) a whole GRPO update took 557-605 ms against 579-692 ms through transformers on a quiet
host; on hosts loaded by other tenants, in-process pairs gave medians of 1.26 s against 1.51 s (265 ms
paired, 10 pairs) one day and 0.94 s against 0.96 s (58 ms paired, 10 pairs) another.

It is not bitwise the transformers forward (products over more rows sum in another order, grouped
attention adds the key gradients of a group in another order); `grpo.lean_forward: false` turns it off.
Tests compare its log-probs, entropies and gradients with transformers' per architecture. Anything `lean_unsupported`
declines, peft wrappers, checkpointed or sharded models and attention dropout keep the transformers path.
Under bf16 autocast its products run in bf16 as the transformers forward's do (the residual stream, norms
and rotation stay fp32); on SmolLM2-135M it took a GRPO update's training from 18.2 to 16.9 s (one run
each, 2-core CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from srlm.engines.lean import _eps, _signed, lean_unsupported


def lean_training_unsupported(model) -> str | None:
    """Why `lean_completion_logits` cannot compute `model`'s logits, or None when it can."""
    why = lean_unsupported(model)
    if why:
        return why
    if float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0 and model.training:
        return "attention dropout"
    if any(type(p) is not torch.nn.Parameter or not _float32_or_frozen_product(p) for p in model.parameters()):
        return "parameters that are not plain float32 tensors (sharded or half precision)"
    return None


def _float32_or_frozen_product(p: torch.Tensor) -> bool:
    """fp32, or a frozen weight in the dtype of the autocast this forward runs under (`grpo.frozen_reference`)."""
    kind = p.device.type
    return p.dtype == torch.float32 or (not p.requires_grad and torch.is_autocast_enabled(kind)
                                        and p.dtype == torch.get_autocast_dtype(kind))


def lean_completion_logits(model, batch, hidden_only: bool = False) -> torch.Tensor:
    """Logits predicting each completion token [B, Lc, V], as `rollout_batch._shared_prefix_logits`
    computes them: each distinct prompt once, every completion attending to its prompt's keys. With
    `hidden_only`, the final-norm hidden states [B, Lc, E] that the output layer would turn into them."""
    inner = model.model
    prompt_mask = batch.prompt_mask.bool()  # [P, Lp]
    n_prompts, lp = batch.prompt_ids.shape
    n_rows, lc = batch.completion_ids.shape
    t = lc - 1  # the last completion token predicts nothing: it is not run
    owner = batch.owner  # [B]
    device = batch.prompt_ids.device
    # positions: prompts count their real tokens from 0; completions continue after their prompt
    prompt_pos = (batch.prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [P, Lp]
    comp_pos = batch.prompt_mask.sum(1)[owner][:, None] + torch.arange(t, device=device)  # [B, T]
    n_head = n_prompts * lp  # prompt rows come first in the flat [N, E] activations, completions after
    ids = torch.cat([batch.prompt_ids.flatten(), batch.completion_ids[:, :t].flatten()])  # [N]
    x = F.embedding(ids, inner.embed_tokens.weight, inner.embed_tokens.padding_idx)  # [N, E]
    cos, sin = _signed(*inner.rotary_emb(x[None], torch.cat([prompt_pos.flatten(), comp_pos.flatten()])[None]))
    cos, sin = cos[0, :, None], sin[0, :, None]  # [N, 1, D]: one rotation for every head
    # additive masks (a large finite negative: a padding query that sees nothing stays finite, no nan)
    big = torch.finfo(x.dtype).max
    causal = torch.ones(lp, lp, dtype=torch.bool, device=device).tril()
    head_allowed = causal[None] & prompt_mask[:, None, :]  # [P, Lp, Lp]
    tail_allowed = torch.cat([prompt_mask[owner][:, None, :].expand(n_rows, t, lp),
                              torch.ones(t, t, dtype=torch.bool, device=device).tril()[None]
                              & batch.completion_attn[:, None, :t].bool()], dim=-1)  # [B, T, Lp + T]
    head_bias = torch.zeros(head_allowed.shape, dtype=x.dtype, device=device).masked_fill_(~head_allowed, -big)
    tail_bias = torch.zeros(tail_allowed.shape, dtype=x.dtype, device=device).masked_fill_(~tail_allowed, -big)
    head_bias, tail_bias = head_bias[:, None], tail_bias[:, None]  # [P, 1, Lp, Lp], [B, 1, T, Lp + T]
    group = n_rows // n_prompts
    uniform = group * n_prompts == n_rows and torch.equal(
        owner, torch.arange(n_prompts, device=device).repeat_interleave(group))

    def to_rows(kv: torch.Tensor) -> torch.Tensor:  # [P, Hkv, Lp, D] -> [B, Hkv, Lp, D]
        if uniform:  # an expand, whose backward sums each group (an index's scatters)
            return kv[:, None].expand(-1, group, -1, -1, -1).flatten(0, 1)
        return kv.index_select(0, owner)

    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        d = attn.head_dim
        n_q, n_kv = attn.q_proj.weight.shape[0] // d, attn.k_proj.weight.shape[0] // d
        h = F.rms_norm(x, x.shape[-1:], layer.input_layernorm.weight, _eps(layer.input_layernorm))
        # one product per projection, on the parameter itself: a joined q/k/v (or gate/up) weight would be a
        # copy of it that autograd keeps until the backward, in every pass
        qk = torch.cat([F.linear(h, attn.q_proj.weight, attn.q_proj.bias),
                        F.linear(h, attn.k_proj.weight, attn.k_proj.bias)], dim=-1)  # [N, (H + Hkv) D]
        qk = qk.unflatten(-1, (n_q + n_kv, d))  # [N, H + Hkv, D]
        v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).unflatten(-1, (n_kv, d))  # [N, Hkv, D]
        if getattr(attn, "q_norm", None) is not None:  # Qwen3 normalises each head's q and k first (in fp32,
            qk = qk.float()  # as transformers does, also when bf16 autocast made the product bf16)
            qk = torch.cat([F.rms_norm(qk[:, :n_q], (d,), attn.q_norm.weight, _eps(attn.q_norm)),
                            F.rms_norm(qk[:, n_q:], (d,), attn.k_norm.weight, _eps(attn.k_norm))], dim=1)
        qk = qk * cos + qk.roll(d // 2, dims=-1) * sin  # rotary: rotate_half's sign is folded into sin
        q, k = qk[:, :n_q], qk[:, n_q:]

        def heads(z: torch.Tensor, rows: slice, n: int, length: int) -> torch.Tensor:  # -> [n, H, length, D]
            return z[rows].view(n, length, -1, d).transpose(1, 2)

        prompt_rows, comp_rows = slice(0, n_head), slice(n_head, None)
        kp, vp = heads(k, prompt_rows, n_prompts, lp), heads(v, prompt_rows, n_prompts, lp)
        out_p = F.scaled_dot_product_attention(heads(q, prompt_rows, n_prompts, lp), kp, vp, attn_mask=head_bias,
                                               scale=attn.scaling, enable_gqa=True)  # [P, H, Lp, D]
        keys = torch.cat([to_rows(kp), heads(k, comp_rows, n_rows, t)], dim=2)  # [B, Hkv, Lp + T, D]
        values = torch.cat([to_rows(vp), heads(v, comp_rows, n_rows, t)], dim=2)
        out_c = F.scaled_dot_product_attention(heads(q, comp_rows, n_rows, t), keys, values, attn_mask=tail_bias,
                                               scale=attn.scaling, enable_gqa=True)  # [B, H, T, D]
        out = torch.cat([out_p.transpose(1, 2).reshape(n_head, -1), out_c.transpose(1, 2).reshape(n_rows * t, -1)])
        x = x + F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
        h = F.rms_norm(x, x.shape[-1:], layer.post_attention_layernorm.weight, _eps(layer.post_attention_layernorm))
        gate, up = F.linear(h, mlp.gate_proj.weight), F.linear(h, mlp.up_proj.weight)  # [N, I] each
        x = x + F.linear(F.silu(gate) * up, mlp.down_proj.weight)
    # the prompt's last position predicts completion token 0; completion position j predicts token j+1
    last = x[:n_head].view(n_prompts, lp, -1)[:, -1]  # [P, E]
    rows = torch.cat([last[owner][:, None], x[n_head:].view(n_rows, t, -1)], dim=1)  # [B, Lc, E]
    rows = F.rms_norm(rows, rows.shape[-1:], inner.norm.weight, _eps(inner.norm))  # [B, Lc, E]
    return rows if hidden_only else F.linear(rows, model.lm_head.weight, model.lm_head.bias)  # [B, Lc, V]

