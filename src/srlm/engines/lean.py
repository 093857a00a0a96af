"""A lean forward pass for decoding with Llama-family models (Qwen2, Qwen3, Llama, Mistral without a
sliding window), used by the HF engine in place of the transformers forward when the model qualifies.

Why: at decode time a small model's step is a handful of small matrix products, and the transformers
module stack (per-layer Python, mask building, a KV cache that is concatenated anew at every token)
costs as much again: on the bench's tiny model (2 CPU cores, 32 rows) a decode step took 12-15 ms, of
which the products are about 3 ms, against about 6.5 ms here (5.5 ms with packed weights). This computes
the same function from the same live weights with fewer ops: the rotary embedding as one complex product,
grouped-query attention that never repeats keys, a KV cache with spare capacity that tokens are written
into, and, for small models, fused q/k/v and gate/up projections (fewer, larger products) that also carry
the RMSNorm weights, which on CPU builds with MKL are packed once for the decode batch's row count (see
`Projection`). Real-sized models (`IN_PLACE_MIN_PARAMS`) decode from the model's own weights, copying
none: their copies cost more memory than the weights and saved no measurable time. It reads the weights
at construction, so an engine builds one per `generate` call and always decodes the current policy.

Anything it does not recognise (another architecture, sliding windows, other activations, peft
wrappers) is reported by `lean_unsupported` and the engine keeps the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable

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
    part; assigning them (the engine's merge and trim) replaces the buffer.

    `reserve` is how many more columns the request can append (its `max_new_tokens`): a buffer is sized
    for them when it is made (at most `RESERVE_STEP` at a time), so a request's cache is allocated once
    at the size it needs. Without it the buffer doubles as it fills (amortised O(1) copies, but up to
    twice the memory)."""

    def __init__(self, reserve: int | None = None):
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.width = 0
        self.reserve = reserve

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

    def capacity_for(self, needed: int) -> int:
        """Columns of a new buffer that must hold `needed` columns now."""
        if self.reserve is None:
            return needed + max(64, self.width)  # doubling
        return needed + min(self.reserve, RESERVE_STEP)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add S new columns (k, v: [B, Hkv, S, D]); the filled keys and values after them."""
        s = k.shape[2]
        if self._k is None or self.width + s > self._k.shape[2]:
            shape = (k.shape[0], k.shape[1], self.capacity_for(self.width + s), k.shape[3])
            new_k, new_v = k.new_empty(shape), v.new_empty(shape)
            if self._k is not None:
                new_k[:, :, :self.width] = self.keys
                new_v[:, :, :self.width] = self.values
            self._k, self._v = new_k, new_v
        self._k[:, :, self.width:self.width + s] = k
        self._v[:, :, self.width:self.width + s] = v
        self.width += s
        return self.keys, self.values


# Rows a prefill runs at once (`LeanForward._prefill_in_chunks`): enough rows x tokens per product to keep
# the matrix products efficient, few enough that a big batch's prefill transients stay a fraction.
PREFILL_ROWS = 16

# The most spare columns a cache buffer gets at once: a request for 32k new tokens does not reserve 32k
# columns for every row up front (most responses stop long before); it grows by this much when it fills.
RESERVE_STEP = 512


class LeanCache:
    """A KV cache for `LeanForward`, with the parts of transformers' cache API the engine uses."""

    def __init__(self, n_layers: int, reserve: int | None = None):
        self.layers = [LeanLayerCache(reserve) for _ in range(n_layers)]

    def row_views(self, rows: int, shape: tuple[int, int, int], like: torch.Tensor,
                  chunks: list[slice]) -> list[LeanCache]:
        """Allocate every empty layer for `rows` rows of `shape` (Hkv, columns, D), and return one cache per
        slice of `chunks` whose buffers are those rows of these ones: appending to a view fills this cache
        (a prefill in row chunks then never holds two copies of the cache)."""
        views = [LeanCache(len(self.layers)) for _ in chunks]
        for i, layer in enumerate(self.layers):
            layer._k, layer._v = like.new_empty((rows, *shape)), like.new_empty((rows, *shape))
            for view, rows_of in zip(views, chunks):
                view.layers[i]._k, view.layers[i]._v = layer._k[rows_of], layer._v[rows_of]
        return views

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

# Models this size or larger decode from their own weights on a CPU (`LeanForward(in_place=...)`): for
# SmolLM2-135M the fused copies (0.37 GB in fp32) and MKL's packed ones (0.79 GB) cost more memory than the
# weights, made a decode step no faster within this machine's noise (8-64 rows), and cost time to build
# and pack in every generate call; on the bench's 2M-parameter model the fused products are 15-25% faster
# per step (fewer, larger products) and their copies are small. On a GPU the copies are a small part of
# its memory and the fused products fewer kernel launches: they stay.
IN_PLACE_MIN_PARAMS = 50_000_000


class Projection:
    """`x @ W.T + b` for one (fused) linear weight `W` [out, in], by the fastest route the machine has.

    A decode step multiplies a few dozen rows by matrices of thousands of columns, and a plain BLAS call
    re-packs the whole weight into its blocked layout every time, which costs about as much as the
    product. On CPU builds with MKL, `pack(rows)` keeps a copy of the weight packed for calls with exactly
    that many rows: on this project's 2-core machine those products alone run 25-45% faster (bench model,
    32 rows) and up to 2x faster (Qwen2.5-0.5B-sized MLP, 8 rows); a whole decode step of the bench model
    0.98-1.15x as fast, median 1.09x over four runs of `benchmarks/decode_step.py` (on a busy machine the
    gain can vanish). Other row counts (prefill) take the plain product.
    fp32 on a CPU without MKL stores the weight [in, out]: with a few dozen rows, x @ W in that layout runs up
    to 1.6x faster than F.linear there. Half-precision weights and GPUs take F.linear on the weight as it is:
    bf16 on an AVX-512 CPU runs it as fast as the transposed layout (or faster: the 49k-row output layer,
    16 rows, 10.7 against 14.1 ms), so the model's own weights (o, down) are read in place, not copied.

    With MKL, a weight that the lean forward computed itself (fused, norm folded in: `rebuild` recomputes
    it from the model) is not kept beside its packed copy: the packed copy is the only one, and the few
    products that need the plain weight (prefill, packing) recompute it and let it go. SmolLM2-135M: 0.37 GB
    less, the cost of recomputing about that of packing.

    `in_place`: the plain product on the weight as it is, never a copy (`LeanForward`'s in-place mode).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 rebuild: Callable[[], torch.Tensor] | None = None, in_place: bool = False):
        fp32_cpu = weight.device.type == "cpu" and weight.dtype == torch.float32 and not in_place
        self.mkl = MKL_PACKING and fp32_cpu
        self.rebuild = rebuild if self.mkl else None
        self.transposed = fp32_cpu and not self.mkl
        # [in, out] when `transposed`, else [out, in]; None when `rebuild` recomputes it
        self.weight = None if self.rebuild else weight.t().contiguous() if self.transposed else weight
        # what `_mkl_linear` reads of the plain weight when the packed one serves: its shape and dtype
        self._shape_of_weight = weight.new_zeros(()).expand(weight.shape)
        self.bias = bias
        self.packed: torch.Tensor | None = None
        self.packed_rows = 0

    def plain_weight(self) -> torch.Tensor:
        return self.weight if self.weight is not None else self.rebuild()

    def pack(self, rows: int) -> None:
        if self.mkl:
            self.packed = None  # the old packed copy goes before the new one is made
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.plain_weight(), rows)
            self.packed_rows = rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            y = torch.matmul(x, self.weight)
            return y if self.bias is None else y + self.bias
        if not self.mkl:
            return F.linear(x, self.weight, self.bias)
        if self.packed is not None and x.numel() // x.shape[-1] == self.packed_rows:
            return torch.ops.mkl._mkl_linear(x, self.packed, self._shape_of_weight, self.bias, self.packed_rows)
        return F.linear(x, self.plain_weight(), self.bias)


# Resident size of MKL's packed layout relative to the plain fp32 weight (SmolLM2-135M: 0.79 GB resident for
# 0.50 GB of projection weights; the allocation is 3.2x, not all of it touched)
MKL_PACKED_RESIDENT = 1.6


def decodes_in_place(model, dtype: torch.dtype | None = None) -> bool:
    """Whether a `LeanForward(model, dtype)` computes from the model's own weights (by default): a model
    of `IN_PLACE_MIN_PARAMS` parameters or more, on a CPU, in its own dtype."""
    embed = model.model.embed_tokens.weight
    return (embed.device.type == "cpu" and dtype in (None, embed.dtype)
            and sum(p.numel() for p in model.parameters()) >= IN_PLACE_MIN_PARAMS)


def lean_copy_bytes(model, dtype: torch.dtype | None = None) -> int:
    """Bytes of weights a `LeanForward` of `model` holds beyond the model's own once decoding: none when it
    decodes in place (`decodes_in_place`); else the fused q/k/v and gate/up weights and the output layer
    with the final norm folded in; on CPU builds with MKL (fp32), the packed copy of every projection
    instead (`Projection.pack`); fp32 on a CPU without MKL, also the transposed o and down weights. With a
    `dtype` other than the model's, a copy of every weight in it."""
    if decodes_in_place(model, dtype):
        return 0
    inner = model.model
    fused = model.lm_head.weight.numel()
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fused += sum(p.weight.numel() for p in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj))
    weight = model.lm_head.weight
    unfused = sum(layer.self_attn.o_proj.weight.numel() + layer.mlp.down_proj.weight.numel()
                  for layer in inner.layers)
    if dtype is not None and dtype != weight.dtype:
        size = torch.empty((), dtype=dtype).element_size()
        return int((fused + unfused + inner.embed_tokens.weight.numel()) * size)
    size = weight.element_size()
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return int(fused * size)
    if MKL_PACKING:  # the packed copies replace the fused ones (`Projection.rebuild`)
        return int(MKL_PACKED_RESIDENT * (fused + unfused) * size)
    return int((fused + unfused) * size)


class LeanForward:
    """`(ids [B, S], mask [B, W], positions [B, S], cache) -> logits of the last position [B, V]`, the
    same function as the transformers model it was built from (whose weights it reads now)."""

    @torch.no_grad()
    def __init__(self, model, dtype: torch.dtype | None = None, in_place: bool | None = None):
        """`dtype`: compute in this dtype from copies of the weights (a float32 policy sampling in bf16, as a
        GPU engine would: half the weight bytes per decode step); None: the model's own dtype.
        `in_place`: compute from the model's own weights, no copy of any (the model's own dtype only);
        None: `decodes_in_place`."""
        inner = model.model
        own = inner.embed_tokens.weight.dtype
        cast = (lambda w: w) if dtype in (None, own) else (lambda w: None if w is None else w.to(dtype))  # noqa: E731
        self.in_place = decodes_in_place(model, dtype) if in_place is None else in_place and dtype in (None, own)
        self.embed = cast(inner.embed_tokens.weight)
        hidden = self.embed.shape[1]
        self.final_eps = _eps(inner.norm) * hidden
        if self.in_place:
            self.final_norm = _scaled_norm(inner.norm.weight)
            self.lm_head = Projection(model.lm_head.weight.detach(), None, in_place=True)
        else:  # the final RMSNorm's weight is folded into the output layer (see `_unit_rms`)
            self.final_norm = None
            head = lambda: cast(_fold_norm(model.lm_head.weight.detach(), inner.norm.weight))  # noqa: E731
            self.lm_head = Projection(head(), None, rebuild=head)
        self.rotary = inner.rotary_emb
        # the rotation angles of a static rotary embedding depend on the position only: tabulate them once
        # (a decode step then looks its row up instead of recomputing cos/sin for every token)
        self._static_rope = getattr(self.rotary, "rope_type", "default") in ("default", "linear", "llama3", "yarn")
        self._rotations: torch.Tensor | None = None  # [N, D/2] complex: cos + i sin of each position
        self.layers = [_in_place_layer(layer) if self.in_place else _fused_layer(layer, hidden, cast)
                       for layer in inner.layers]
        self.projections = [self.lm_head] + [p for layer in self.layers for p in layer.values()
                                             if isinstance(p, Projection)]

    def new_cache(self, reserve: int | None = None) -> LeanCache:
        """An empty cache; `reserve`: the most tokens a request will append after its prompt."""
        return LeanCache(len(self.layers), reserve)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: LeanCache):
        b, s = ids.shape
        if s > 1 and b > PREFILL_ROWS and not cache.layers[0].is_initialized:
            return self._prefill_in_chunks(ids, mask, positions, cache)
        return self._forward(ids, mask, positions, cache)

    def _prefill_in_chunks(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                           cache: LeanCache) -> torch.Tensor:
        """A prefill of many rows, `PREFILL_ROWS` at a time, each chunk writing its rows of one cache
        allocated up front: the activations and attention scores of a prefill grow with its rows x tokens
        (64 GSM8K prompts in bf16: 0.24 GB above the cache), a chunk's are a fraction of them. Each row's
        logits are computed from its own row alone either way."""
        b, s = ids.shape
        first = cache.layers[0]
        layer = self.layers[0]
        chunks = [slice(r, min(r + PREFILL_ROWS, b)) for r in range(0, b, PREFILL_ROWS)]
        views = cache.row_views(b, (layer["kv_heads"], first.capacity_for(s), layer["head_dim"]), self.embed, chunks)
        logits = [self._forward(ids[c], mask[c], positions[c], view) for c, view in zip(chunks, views)]
        for layer_cache in cache.layers:
            layer_cache.width = s
        return torch.cat(logits)  # [B, V]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: LeanCache):
        x = F.embedding(ids, self.embed)  # [B, S, E]
        rotation = self._rotation(x, positions)[:, :, None]  # [B, S, 1, D/2]: one rotation for every head
        b, s = ids.shape
        width = mask.shape[1]
        if s == 1:
            self._pack_for(b)
        # a large finite negative, not -inf: a padding query that sees nothing stays finite (0 * inf = nan)
        big = torch.finfo(x.dtype).max
        if s == 1:  # a decode step's query is the last column: it sees every key that is not padding
            kv_heads = self.layers[0]["kv_heads"]
            bias = ((mask.to(x.dtype) - 1) * big).repeat_interleave(kv_heads, dim=0)[:, None]  # [B Hkv, 1, W]
        else:  # query at column (width - s + i) sees keys at columns <= its own that are not padding
            cols = torch.arange(width, device=ids.device)
            rows = torch.arange(width - s, width, device=ids.device)
            allowed = (cols[None, :] <= rows[:, None])[None] & mask[:, None, :].bool()  # [B, S, W]
            bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
            bias.masked_fill_(~allowed, -big)
            bias = bias[:, None]  # [B, 1, S, W]
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = x + _attention(layer, _normed(x, layer["eps1"], layer["norm1"]), rotation, bias, layer_cache)
            x = x + _mlp(layer, _normed(x, layer["eps2"], layer["norm2"]))
        return self.lm_head(_normed(x[:, -1], self.final_eps, self.final_norm))  # [B, V]

    def _pack_for(self, rows: int) -> None:
        """Pack the weights for decode steps of `rows` rows, unless they are. At once when the row count
        changes (rows finished and were dropped, or joined): the fused weights exist only packed, and a
        step without them would recompute them (`Projection.rebuild`), which costs about what packing does."""
        if self.lm_head.packed_rows == rows or not self.lm_head.mkl:
            return
        for p in self.projections:
            p.pack(rows)


    def _rotation(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """cos + i sin [B, S, D/2] (complex) of the rotary embedding's angles at `positions` [B, S]."""
        if not self._static_rope:
            return _complex_rotation(*self.rotary(x, positions))
        needed = int(positions.max()) + 1
        if self._rotations is None or needed > self._rotations.shape[0]:
            n = max(needed, 2 * self._rotations.shape[0] if self._rotations is not None else 512)
            cos, sin = self.rotary(x, torch.arange(n, device=x.device)[None])  # [1, n, D]
            self._rotations = _complex_rotation(cos[0], sin[0])
        return self._rotations[positions]


def _complex_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's cos, sin [..., D] (each the angles of D/2 pairs, twice) as cos + i sin
    [..., D/2] in complex64: the rotation is computed in fp32 whatever the model's dtype."""
    half = cos.shape[-1] // 2
    return torch.complex(cos[..., :half].float(), sin[..., :half].float())


def _signed(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin with its first half negated): rotate_half's sign folded into sin (the training forward's
    rotation, `train/lean_forward.py`)."""
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def _unit_rms(x: torch.Tensor, eps_times_n: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) / sqrt(n) over the last dimension (size n): RMSNorm without its weight
    and with a factor sqrt(n), both folded into the next projection's weight (`_fold_norm`), from one
    `vector_norm` and a few ops on the [B, 1] statistic. Alone it is no faster than F.rms_norm (27-38
    against 22-36 us on a decode step's [32, 256], 2-core machine); in whole decode steps it was ahead
    of F.rms_norm without a weight in two paired runs (1.7 and 0.26 ms per step, 17 and 12 of 20 pairs).
    The statistic is fp32, as in transformers' RMSNorm (fp16 squares overflow past a norm of 256)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # [..., 1]
    return x * norm.square_().add_(eps_times_n).rsqrt_().to(x.dtype)


def _fold_norm(weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] with the RMSNorm weight [in] before it and `_unit_rms`'s factor folded in:
    W (w * x / rms(x)) = (W diag(w sqrt(n))) (x / rms(x) / sqrt(n)). Computed in fp32."""
    scale = norm_weight.float() * norm_weight.shape[0] ** 0.5
    return (weight.float() * scale[None, :]).to(weight.dtype)


def _scaled_norm(norm_weight: torch.Tensor) -> torch.Tensor:
    """An RMSNorm weight [n] times sqrt(n), to multiply `_unit_rms`'s output by when it is not folded into
    the next projection's weight (computed in fp32, stored in the weight's dtype)."""
    return (norm_weight.detach().float() * norm_weight.shape[0] ** 0.5).to(norm_weight.dtype)


def _normed(x: torch.Tensor, eps_times_n: float, scaled_weight: torch.Tensor | None) -> torch.Tensor:
    """RMSNorm of `x`: `_unit_rms`, times the norm's weight unless the next projection carries it (None)."""
    h = _unit_rms(x, eps_times_n)
    return h if scaled_weight is None else h * scaled_weight


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def qkv_bias(attn) -> torch.Tensor | None:
    """The q, k and v projections' biases as one vector (zeros for a projection without one), or None when
    none has a bias (Llama without attention_bias)."""
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if all(p.bias is None for p in projections):
        return None
    return torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in projections])


def _pairs_adjacent(head_dim: int) -> torch.Tensor:
    """A permutation of one head's dimensions that puts each rotary pair (i, i + D/2) side by side, so that
    the pairs can be viewed as complex numbers and rotated by one complex product. q and k are permuted
    alike (their dot products do not change), v is not: attention computes the same function."""
    return torch.arange(head_dim).view(2, head_dim // 2).t().reshape(-1)


def _fused_layer(layer, hidden: int, cast: Callable = lambda w: w) -> dict:
    """One decoder layer's weights as the lean forward uses them, each passed through `cast` (a dtype
    conversion, or none: then o and down are the model's own tensors)."""
    attn, mlp = layer.self_attn, layer.mlp
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # Qwen3
    head_dim = attn.head_dim
    n_q, n_kv = attn.q_proj.weight.shape[0] // head_dim, attn.k_proj.weight.shape[0] // head_dim
    pairs = _pairs_adjacent(head_dim)
    # output rows of the fused q/k/v product: each q and k head's dimensions in pair order, v's as they are
    rows = torch.cat([h * head_dim + pairs for h in range(n_q + n_kv)]
                     + [torch.arange((n_q + n_kv) * head_dim, (n_q + 2 * n_kv) * head_dim)])
    # the attention's 1/sqrt(D) goes into q once here (into q_norm's weight when q is normalised: the
    # norm would undo it; the rotation is linear and keeps it) instead of scaling every score
    q_scale = 1.0 if q_norm is not None else attn.scaling

    def qkv_weight() -> torch.Tensor:
        weight = torch.cat([attn.q_proj.weight * q_scale, attn.k_proj.weight, attn.v_proj.weight])[rows]
        return cast(_fold_norm(weight.detach(), layer.input_layernorm.weight))

    def gate_up_weight() -> torch.Tensor:
        return cast(_fold_norm(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                               layer.post_attention_layernorm.weight))

    bias = qkv_bias(attn)  # a new tensor (a concatenation): scaled in place
    if bias is not None:
        bias = bias.detach()
        bias[:attn.q_proj.weight.shape[0]] *= q_scale
        bias = cast(bias[rows])
    o_bias = None if attn.o_proj.bias is None else attn.o_proj.bias.detach()
    return {
        "qkv": Projection(qkv_weight(), bias, rebuild=qkv_weight),
        "head_dim": head_dim, "heads": n_q, "kv_heads": n_kv,
        "o": Projection(cast(attn.o_proj.weight.detach()), cast(o_bias)),
        "q_norm": (cast(q_norm.weight[pairs] * attn.scaling), _eps(q_norm)) if q_norm is not None else None,
        "k_norm": (cast(k_norm.weight[pairs]), _eps(k_norm)) if k_norm is not None else None,
        "eps1": _eps(layer.input_layernorm) * hidden, "eps2": _eps(layer.post_attention_layernorm) * hidden,
        "norm1": None, "norm2": None,  # folded into qkv and gate_up
        "gate_up": Projection(gate_up_weight(), None, rebuild=gate_up_weight),
        "down": Projection(cast(mlp.down_proj.weight.detach()), None),
    }


def _in_place_layer(layer) -> dict:
    """One decoder layer's weights as the lean forward uses them without copying any: separate q, k, v,
    gate and up products on the model's own weights, the RMSNorm weights applied to the activations, the
    attention's scaling applied to the scores, q and k put in rotary-pair order after their product."""
    attn, mlp = layer.self_attn, layer.mlp
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # Qwen3
    head_dim = attn.head_dim

    def own(linear) -> Projection:
        return Projection(linear.weight.detach(), None if linear.bias is None else linear.bias.detach(), in_place=True)

    return {
        "q": own(attn.q_proj), "k": own(attn.k_proj), "v": own(attn.v_proj), "o": own(attn.o_proj),
        "pairs": _pairs_adjacent(head_dim), "scale": attn.scaling,
        "head_dim": head_dim, "heads": attn.q_proj.weight.shape[0] // head_dim,
        "kv_heads": attn.k_proj.weight.shape[0] // head_dim,
        "q_norm": (q_norm.weight.detach(), _eps(q_norm)) if q_norm is not None else None,
        "k_norm": (k_norm.weight.detach(), _eps(k_norm)) if k_norm is not None else None,
        "norm1": _scaled_norm(layer.input_layernorm.weight),
        "norm2": _scaled_norm(layer.post_attention_layernorm.weight),
        "eps1": _eps(layer.input_layernorm) * attn.q_proj.weight.shape[1],
        "eps2": _eps(layer.post_attention_layernorm) * attn.q_proj.weight.shape[1],
        "gate": own(mlp.gate_proj), "up": own(mlp.up_proj), "down": own(mlp.down_proj),
    }


def _mlp(layer: dict, h: torch.Tensor) -> torch.Tensor:
    """The SwiGLU MLP of `h` [B, S, E] (normalised)."""
    if "gate_up" in layer:
        gate, up = layer["gate_up"](h).chunk(2, dim=-1)  # [B, S, I] each
    else:
        gate, up = layer["gate"](h), layer["up"](h)
    return layer["down"](F.silu(gate) * up)


def _attention(layer: dict, h: torch.Tensor, rotation: torch.Tensor, bias: torch.Tensor,
               cache: LeanLayerCache) -> torch.Tensor:
    """Self-attention of `h` [B, S, E] (normalised) with the rotation [B, S, 1, D/2] of its positions;
    `bias` is [B Hkv, 1, W] for a decode step (S = 1), else [B, 1, S, W]."""
    b, s, _ = h.shape
    d, n_q, n_kv = layer["head_dim"], layer["heads"], layer["kv_heads"]
    scale = 1.0
    if "qkv" in layer:
        qkv = layer["qkv"](h)  # [B, S, (H + 2 Hkv) D]; q already carries the 1/sqrt(D) scaling
        qk = qkv[..., :(n_q + n_kv) * d].unflatten(-1, (n_q + n_kv, d))  # [B, S, H + Hkv, D], pairs adjacent
        v = qkv[..., (n_q + n_kv) * d:].unflatten(-1, (n_kv, d)).transpose(1, 2)  # [B, Hkv, S, D]
    else:  # the model's own weights: q unscaled, the scaling goes into the scores
        scale = layer["scale"]
        qk = torch.cat([layer["q"](h), layer["k"](h)], dim=-1).unflatten(-1, (n_q + n_kv, d))  # [B, S, H + Hkv, D]
        v = layer["v"](h).unflatten(-1, (n_kv, d)).transpose(1, 2)  # [B, Hkv, S, D]
    if layer["q_norm"] is not None:  # Qwen3 normalises each head's q and k before the rotation
        qk = torch.cat([F.rms_norm(qk[:, :, :n_q], (d,), *layer["q_norm"]),
                        F.rms_norm(qk[:, :, n_q:], (d,), *layer["k_norm"])], dim=2)
    if "pairs" in layer:  # the model's own q and k weights: their outputs put in rotary-pair order here
        qk = qk[..., layer["pairs"]]
    # rotary position embedding of q and k at once: each pair (x1, x2) is the complex number x1 + i x2,
    # turned by cos + i sin: (x1 cos - x2 sin, x2 cos + x1 sin), transformers' x * cos + rotate_half(x) * sin
    pairs = torch.view_as_complex(qk.float().unflatten(-1, (d // 2, 2)))  # [B, S, H + Hkv, D/2]
    qk = torch.view_as_real(pairs * rotation).flatten(-2).to(h.dtype)  # [B, S, H + Hkv, D]
    q, k = qk[:, :, :n_q].transpose(1, 2), qk[:, :, n_q:].transpose(1, 2)  # [B, H, S, D], [B, Hkv, S, D]
    keys, values = cache.append(k, v)  # [B, Hkv, W, D]
    if s > 1:  # prefill: the fused kernel never holds all [B, H, S, W] scores (long prompts, big batches)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scale, enable_gqa=True)
        return layer["o"](out.transpose(1, 2).reshape(b, s, -1))  # [B, S, E]
    # query heads j*G .. (j+1)*G-1 share kv head j: group them instead of repeating the keys, and add the
    # padding bias inside the product
    qg = q.reshape(b * n_kv, n_q // n_kv, d)  # [B Hkv, G, D]
    scores = torch.baddbmm(bias, qg, keys.flatten(0, 1).transpose(1, 2), alpha=scale)  # [B Hkv, G, W]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.bmm(probs, values.flatten(0, 1))  # [B Hkv, G, D]: heads in order
    return layer["o"](out.view(b, 1, n_q * d))
