"""A lean forward pass for decoding with Llama-family models (Qwen2, Qwen3, Llama, Mistral without a
sliding window), used by the HF engine in place of the transformers forward when the model qualifies.

Why: at decode time a small model's step is a handful of small matrix products, and the transformers
module stack (per-layer Python, mask building, a KV cache that is concatenated anew at every token)
costs as much again: on the bench's tiny model (2 CPU cores, 32 rows) a decode step took 12-15 ms, of
which the products are about 3 ms, against about 6.5 ms here (5.5 ms with packed weights). This computes
the same function from the same live weights with fused q/k/v and gate/up projections (fewer, larger
products), grouped-query attention that never repeats keys, and a KV cache with spare capacity that
tokens are written into. On CPU builds with MKL the products use weights that MKL has packed once for
the decode batch's row count (see `Projection`). It reads the weights at construction, so an engine
builds one per `generate` call and always decodes the current policy.

Anything it does not recognise (another architecture, sliding windows, other activations, peft
wrappers) is reported by `lean_unsupported` and the engine keeps the transformers forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("qwen2", "qwen3", "llama", "mistral")


def lean_unsupported(model) -> str | None:
    """Why `model` cannot use the lean forward, or None when it can."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} is not one of {SUPPORTED_TYPES}"
    if not hasattr(model, "model") or not hasattr(model.model, "layers") or not hasattr(model, "lm_head"):
        return "not a plain transformers causal LM (a peft wrapper, say)"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    window = getattr(cfg, "sliding_window", None)
    if kind == "mistral" and window is not None and window < cfg.max_position_embeddings:
        return "sliding-window attention"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    attn = model.model.layers[0].self_attn
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")):
        return "unrecognised attention module"
    return None


class LeanLayerCache:
    """Keys and values of one layer, [B, Hkv, W, D], in a buffer with spare columns so that appending a
    token writes in place instead of copying the whole cache. `keys` / `values` are views of the filled
    part; assigning them (the engine's merge and trim) replaces the buffer."""

    def __init__(self):
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.width = 0

    @property
    def is_initialized(self) -> bool:
        return self._k is not None

    @property
    def keys(self) -> torch.Tensor:
        return self._k[:, :, :self.width]

    @keys.setter
    def keys(self, value: torch.Tensor) -> None:
        self._k, self.width = value, value.shape[2]

    @property
    def values(self) -> torch.Tensor:
        return self._v[:, :, :self.width]

    @values.setter
    def values(self, value: torch.Tensor) -> None:
        self._v = value

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add S new columns (k, v: [B, Hkv, S, D]); the filled keys and values after them."""
        s = k.shape[2]
        if self._k is None or self.width + s > self._k.shape[2]:
            capacity = self.width + s + max(64, self.width)  # doubling: amortised O(1) copies per token
            shape = (k.shape[0], k.shape[1], capacity, k.shape[3])
            new_k, new_v = k.new_empty(shape), v.new_empty(shape)
            if self._k is not None:
                new_k[:, :, :self.width] = self.keys
                new_v[:, :, :self.width] = self.values
            self._k, self._v = new_k, new_v
        self._k[:, :, self.width:self.width + s] = k
        self._v[:, :, self.width:self.width + s] = v
        self.width += s
        return self.keys, self.values


class LeanCache:
    """A KV cache for `LeanForward`, with the parts of transformers' cache API the engine uses."""

    def __init__(self, n_layers: int):
        self.layers = [LeanLayerCache() for _ in range(n_layers)]

    def batch_select_indices(self, idx: torch.Tensor) -> None:
        # index_select, not x[idx]: the advanced-indexing kernel took 6x longer on these [B, H, W, D] buffers
        for layer in self.layers:
            layer._k, layer._v = layer._k.index_select(0, idx), layer._v.index_select(0, idx)


def _mkl_packing_available() -> bool:
    """Whether this torch build has MKL's pre-packed matrix product (x86 builds; not macOS on Apple chips)."""
    try:
        return (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
                and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))
    except (AttributeError, RuntimeError):
        return False


MKL_PACKING = _mkl_packing_available()


class Projection:
    """`x @ W.T + b` for one (fused) linear weight `W` [out, in], by the fastest route the machine has.

    A decode step multiplies a few dozen rows by matrices of thousands of columns, and a plain BLAS call
    re-packs the whole weight into its blocked layout every time, which costs about as much as the
    product. On CPU builds with MKL, `pack(rows)` keeps a copy of the weight packed for calls with exactly
    that many rows: on this project's 2-core machine those products alone run 25-45% faster (bench model,
    32 rows) and up to 2x faster (Qwen2.5-0.5B-sized MLP, 8 rows); a whole decode step of the bench model
    0.98-1.15x as fast, median 1.09x over four runs of `benchmarks/decode_step.py` (on a busy machine the
    gain can vanish). Other row counts (prefill) take the plain product.
    Elsewhere (GPU, other BLAS) the weight is stored [in, out]: with a few dozen rows, x @ W in that layout
    runs up to 1.6x faster on CPU than F.linear.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.mkl = MKL_PACKING and weight.device.type == "cpu" and weight.dtype == torch.float32
        self.weight = weight if self.mkl else weight.t().contiguous()  # [out, in] for MKL, else [in, out]
        self.bias = bias
        self.packed: torch.Tensor | None = None
        self.packed_rows = 0

    def pack(self, rows: int) -> None:
        if self.mkl:
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
            self.packed_rows = rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.mkl:
            y = torch.matmul(x, self.weight)
            return y if self.bias is None else y + self.bias
        if self.packed is not None and x.numel() // x.shape[-1] == self.packed_rows:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.packed_rows)
        return F.linear(x, self.weight, self.bias)


# Packing reads and writes every weight once, about the cost of a few decode steps' products: a batch
# whose row count changed (rows finished and were dropped) is re-packed for at most once per this many
# steps, so the packing can never cost more than it saves by much.
REPACK_EVERY = 16


class LeanForward:
    """`(ids [B, S], mask [B, W], positions [B, S], cache) -> logits of the last position [B, V]`, the
    same function as the transformers model it was built from (whose weights it reads now)."""

    @torch.no_grad()
    def __init__(self, model):
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.final_norm = (inner.norm.weight, _eps(inner.norm))
        self.lm_head = Projection(model.lm_head.weight.detach(), None)
        self.rotary = inner.rotary_emb
        # the rotation angles of a static rotary embedding depend on the position only: tabulate them once
        # (a decode step then looks its row up instead of recomputing cos/sin for every token)
        self._static_rope = getattr(self.rotary, "rope_type", "default") in ("default", "linear", "llama3", "yarn")
        self._cos: torch.Tensor | None = None  # [N, D]
        self._sin: torch.Tensor | None = None  # [N, D], with rotate_half's sign folded in
        self.layers = [_fused_layer(layer) for layer in inner.layers]
        self.projections = [self.lm_head] + [layer[k] for layer in self.layers
                                             for k in ("qkv", "o", "gate_up", "down")]
        self._steps_since_pack = REPACK_EVERY

    def new_cache(self) -> LeanCache:
        return LeanCache(len(self.layers))

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: LeanCache):
        x = F.embedding(ids, self.embed)  # [B, S, E]
        cos, sin = self._rotation(x, positions)  # [B, S, D] each
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, S, 1, D]: one rotation for every head
        b, s = ids.shape
        width = mask.shape[1]
        if s == 1:
            self._pack_for(b)
        # a large finite negative, not -inf: a padding query that sees nothing stays finite (0 * inf = nan)
        big = torch.finfo(x.dtype).max
        if s == 1:  # a decode step's query is the last column: it sees every key that is not padding
            bias = ((mask.to(x.dtype) - 1) * big)[:, None]  # [B, 1, W]: 0 or the dtype's min
        else:  # query at column (width - s + i) sees keys at columns <= its own that are not padding
            cols = torch.arange(width, device=ids.device)
            rows = torch.arange(width - s, width, device=ids.device)
            allowed = (cols[None, :] <= rows[:, None])[None] & mask[:, None, :].bool()  # [B, S, W]
            bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
            bias.masked_fill_(~allowed, -big)
        bias = bias[:, None, None]  # [B, 1, 1, S, W]
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = x + _attention(layer, F.rms_norm(x, x.shape[-1:], *layer["norm1"]), cos, sin, bias, layer_cache)
            h = F.rms_norm(x, x.shape[-1:], *layer["norm2"])
            gate, up = layer["gate_up"](h).chunk(2, dim=-1)  # [B, S, I] each
            x = x + layer["down"](F.silu(gate) * up)
        last = F.rms_norm(x[:, -1], x.shape[-1:], *self.final_norm)  # [B, E]
        return self.lm_head(last)  # [B, V]

    def _pack_for(self, rows: int) -> None:
        """Pack the weights for decode steps of `rows` rows, unless they are or were packed just now."""
        self._steps_since_pack += 1
        if self.lm_head.packed_rows == rows or not self.lm_head.mkl or self._steps_since_pack < REPACK_EVERY:
            return
        for p in self.projections:
            p.pack(rows)
        self._steps_since_pack = 0


    def _rotation(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [B, S, D] of the rotary embedding at `positions` [B, S]."""
        if not self._static_rope:
            return _signed(*self.rotary(x, positions))
        needed = int(positions.max()) + 1
        if self._cos is None or needed > self._cos.shape[0]:
            n = max(needed, 2 * self._cos.shape[0] if self._cos is not None else 512)
            cos, sin = self.rotary(x, torch.arange(n, device=x.device)[None])  # [1, n, D]
            self._cos, self._sin = _signed(cos[0], sin[0])
        return self._cos[positions], self._sin[positions]


def _signed(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin with its first half negated): rotate_half's sign folded into sin, see _attention."""
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _stacked(*weights: torch.Tensor, bias: torch.Tensor | None = None) -> Projection:
    """One projection computing several linear layers' outputs at once (weights [out, in] stacked along
    `out`): fewer, larger products."""
    weight = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
    return Projection(weight, bias)


def _fused_layer(layer) -> dict:
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # Qwen3
    # the attention's 1/sqrt(D) goes into q once here (into q_norm's weight when q is normalised: the
    # norm would undo it; the rotation is linear and keeps it) instead of scaling every score
    q_scale = 1.0 if q_norm is not None else attn.scaling
    weights = [attn.q_proj.weight * q_scale, attn.k_proj.weight, attn.v_proj.weight]
    bias = None
    if any(p.bias is not None for p in projections):
        bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0])
                          for p in projections]).detach()
        bias[:attn.q_proj.weight.shape[0]] *= q_scale
    head_dim = attn.head_dim
    return {
        "qkv": _stacked(*weights, bias=bias), "head_dim": head_dim,
        "heads": attn.q_proj.weight.shape[0] // head_dim, "kv_heads": attn.k_proj.weight.shape[0] // head_dim,
        "o": _stacked(attn.o_proj.weight, bias=None if attn.o_proj.bias is None else attn.o_proj.bias.detach()),
        "q_norm": (q_norm.weight * attn.scaling, _eps(q_norm)) if q_norm is not None else None,
        "k_norm": (k_norm.weight, _eps(k_norm)) if k_norm is not None else None,
        "norm1": (layer.input_layernorm.weight, _eps(layer.input_layernorm)),
        "norm2": (layer.post_attention_layernorm.weight, _eps(layer.post_attention_layernorm)),
        "gate_up": _stacked(mlp.gate_proj.weight, mlp.up_proj.weight),
        "down": _stacked(mlp.down_proj.weight),
    }


def _attention(layer: dict, h: torch.Tensor, cos, sin, bias: torch.Tensor, cache: LeanLayerCache) -> torch.Tensor:
    b, s, _ = h.shape
    d, n_q, n_kv = layer["head_dim"], layer["heads"], layer["kv_heads"]
    qkv = layer["qkv"](h)  # [B, S, (H + 2 Hkv) D]; q already carries the 1/sqrt(D) scaling
    qk = qkv[..., :(n_q + n_kv) * d].unflatten(-1, (n_q + n_kv, d))  # [B, S, H + Hkv, D]
    v = qkv[..., (n_q + n_kv) * d:].unflatten(-1, (n_kv, d)).transpose(1, 2)  # [B, Hkv, S, D]
    if layer["q_norm"] is not None:  # Qwen3 normalises each head's q and k before the rotation
        qk = torch.cat([F.rms_norm(qk[:, :, :n_q], (d,), *layer["q_norm"]),
                        F.rms_norm(qk[:, :, n_q:], (d,), *layer["k_norm"])], dim=2)
    # rotary position embedding of q and k at once: x * cos + rotate_half(x) * sin, where rotate_half
    # (x1, x2) = (-x2, x1) is a roll by D/2 with the sign folded into `sin`
    qk = qk * cos + qk.roll(d // 2, dims=-1) * sin  # [B, S, H + Hkv, D]
    q, k = qk[:, :, :n_q].transpose(1, 2), qk[:, :, n_q:].transpose(1, 2)  # [B, H, S, D], [B, Hkv, S, D]
    keys, values = cache.append(k, v)  # [B, Hkv, W, D]
    if s > 1:  # prefill: the fused kernel never holds all [B, H, S, W] scores (long prompts, big batches)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias[:, :, 0], scale=1.0, enable_gqa=True)
        return layer["o"](out.transpose(1, 2).reshape(b, s, -1))  # [B, S, E]
    group = n_q // n_kv
    # query heads j*group .. (j+1)*group-1 share kv head j: group them instead of repeating the keys
    qg = q.reshape(b, n_kv, group * s, d)  # [B, Hkv, G*S, D]
    scores = torch.matmul(qg, keys.transpose(-1, -2))  # [B, Hkv, G*S, W]
    scores = scores.view(b, n_kv, group, s, -1) + bias  # [B, Hkv, G, S, W]
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).view(b, n_kv, group * s, -1)
    out = torch.matmul(probs, values)  # [B, Hkv, G*S, D]
    out = out.view(b, n_q, s, d).transpose(1, 2).reshape(b, s, -1)  # [B, S, H*D]
    return layer["o"](out)
