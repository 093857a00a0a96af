"""Generation with a transformers model: batched KV-cache decoding on CPU or GPU.

It decodes the model object it is given (the training policy itself in GRPO: no copy, no weight sync).
Sequences are sorted by prompt length (longest first) so padding is small. Decoding is continuous: rows
that finish are dropped from the batch and from the KV cache (a few at a time, one cache copy for all),
and once enough slots are free, waiting sequences are prefilled and merged into the running batch (the
two caches are left-padded to one width). So a batch costs about as much as its live sequences, and one
long response no longer holds a batch of finished ones hostage, which is where a plain `model.generate`
loop loses most of its time. Each sequence samples from its own seeded random stream, so its tokens do
not depend on which other sequences shared its batch (resumed evaluations reproduce uninterrupted ones).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from srlm.data.collate import distinct_left_padded
from srlm.engines.base import Completion, SamplingParams, prompt_seeds
from srlm.engines.lean import LeanForward, LeanLayerCache, lean_copy_bytes, lean_unsupported
from srlm.hf_compat import cache_kwargs
from srlm.memory import describe_estimate, eval_estimate, kv_bytes_per_token, rows_within
from srlm.repetition import WINDOW as REPETITION_WINDOW
from srlm.repetition import ends_in_loop, tokens_end_in_loop

# With `SamplingParams.stop_repetition`, a row's tokens are tested for a loop every this many tokens (a
# test costs well under a millisecond; a loop is caught at most this many tokens late).
REPETITION_CHECK_EVERY = 32


@dataclass
class _Row:
    """One sequence being decoded: where its output goes and what it has produced so far."""

    slot: tuple[int, int]  # (prompt index, sample index)
    seed: str  # of this sequence's own random stream: its samples do not depend on its batch-mates
    rng: random.Random | None = None  # made when the row enters a batch (the state is 2.5 kB per row)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    done: bool = False  # finished; it may still occupy a batch slot until the next compaction


@dataclass
class _Stops:
    """The stopping rule of one `generate` call, encoded once: single-token stops are compared by id
    (vectorised), only multi-token stop strings need the decoded tail of a row."""

    ids: torch.Tensor  # [S] long
    strings: list[str]
    tail_tokens: int  # how many trailing tokens to decode to see any stop string


@dataclass
class _Batch:
    """The live rows: their KV cache, attention mask, next position and the logits of their next token."""

    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [B, W] 1 for real tokens, 0 for left padding
    next_pos: torch.Tensor  # [B, 1] position id of each row's next token
    rows: list[_Row]
    logits: torch.Tensor | None  # [B, V] pending: the next token of every row is sampled from these


def _layers(cache) -> list:
    return list(getattr(cache, "layers", []))


def _mergeable(cache) -> bool:
    """Caches we know how to left-pad and concatenate: the lean forward's, and transformers' plain
    (non-sliding) dynamic layers."""
    from transformers.cache_utils import DynamicLayer

    layers = _layers(cache)
    return bool(layers) and all(type(layer) in (DynamicLayer, LeanLayerCache) and layer.is_initialized
                                for layer in layers)


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`x` left-padded with zeros along `dim` to `width`."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch holding the rows of `a` then `b`; the narrower one is left-padded (masked) to the wider."""
    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(_layers(a.cache), _layers(b.cache)):  # keys/values: [B, H, W, D]
        la.keys = torch.cat([_left_pad(la.keys, width, 2), _left_pad(lb.keys, width, 2)], dim=0)
        la.values = torch.cat([_left_pad(la.values, width, 2), _left_pad(lb.values, width, 2)], dim=0)
    return _Batch(a.cache, torch.cat([_left_pad(a.mask, width, 1), _left_pad(b.mask, width, 1)]),
                  torch.cat([a.next_pos, b.next_pos]), a.rows + b.rows, torch.cat([a.logits, b.logits]))


def _compact(batch: _Batch) -> None:
    """Drop finished rows from the batch and the cache (in place), and leading columns that no remaining
    row attends to. One copy of the cache, so it is done for several finished rows at once."""
    keep = [b for b, row in enumerate(batch.rows) if not row.done]
    idx = torch.tensor(keep, device=batch.mask.device)
    batch.cache.batch_select_indices(idx)
    batch.mask, batch.next_pos = batch.mask[idx], batch.next_pos[idx]
    batch.rows = [batch.rows[b] for b in keep]
    if batch.logits is not None:
        batch.logits = batch.logits[idx]
    first = int(batch.mask.any(dim=0).int().argmax())
    if first > 0 and _mergeable(batch.cache):
        for layer in _layers(batch.cache):
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        batch.mask = batch.mask[:, first:]


class HFEngine:
    """`generate` for a `transformers` causal LM (or a peft wrapper of one).

    `refill` is the fraction of `batch_size` that must be free before waiting sequences join the running
    batch: joining costs a prefill call and a copy of the cache, so it is worth doing for several at once.
    `lean` decodes Llama-family models with `srlm.engines.lean` (same function, about twice as fast per
    decode step on small models); other models, or `lean=False`, use the transformers forward.
    `kv_cache_gb` caps the rows decoded together so that their KV cache, sized for the longest prompt of a
    `generate` call plus its `max_new_tokens`, fits in that many GB (at least one row): the cache is the
    part of decoding memory that grows with the batch (SmolLM2-135M, 64 rows of ~400 tokens: 1.2 GB in
    fp32). Each row samples from its own stream, so the cap changes the speed, not what is sampled.
    `compute_dtype` (lean forward only) decodes in that dtype from copies of the weights made per `generate`
    call: GRPO with `bf16_autocast` samples its float32 policy in bf16, as a GPU engine would.
    """

    name = "hf"
    stops_repetition = True  # honours SamplingParams.stop_repetition

    def __init__(self, model, tokenizer, batch_size: int = 64, progress: bool = False, refill: float = 0.25,
                 lean: bool = True, kv_cache_gb: float | None = None, compute_dtype: torch.dtype | None = None):
        self.model = model
        self.compute_dtype = compute_dtype
        self.kv_cache_gb = kv_cache_gb
        self.live_rows = batch_size  # rows decoded together in the current call (`rows_for`)
        self.lean = lean
        self._lean: LeanForward | None = None  # built per generate call: it reads the current weights
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.refill = refill
        self._keep_arg = True  # the model's forward accepts `logits_to_keep`
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams, seeds: Sequence[int] | None = None,
                 on_complete: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """`sampling.n` completions per prompt. Sample j of prompt i draws its random numbers from its own
        stream, seeded by (`seeds[i]`, j) (default: `prompt_seeds(sampling.seed)`), so what it samples does not
        depend on batch size or on which other prompts share the call: an evaluation resumed with fewer
        prompts reproduces the uninterrupted one. `on_complete(i, completions)` is called as soon as all
        samples of prompt i are done (evaluation appends them to disk right away)."""
        if seeds is None:
            seeds = prompt_seeds(sampling.seed if sampling.seed is not None else random.randrange(2**62),
                                 len(prompts))
        jobs = [(i, j) for i in range(len(prompts)) for j in range(sampling.n)]
        # Longest first: the slowest sequences start early, and equal lengths share a prefill (less padding).
        jobs.sort(key=lambda ij: -len(prompts[ij[0]]))
        rows = [_Row((i, j), f"{seeds[i]}/{j}") for i, j in jobs]
        out: list[list[Completion | None]] = [[None] * sampling.n for _ in prompts]
        remaining = [sampling.n] * len(prompts)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="generate", unit="seq", leave=False)

        def finish(row: _Row) -> None:
            i, j = row.slot
            out[i][j] = Completion(token_ids=row.tokens,
                                   text=self.tokenizer.decode(row.tokens, skip_special_tokens=True),
                                   finish_reason=row.finish_reason or "length")
            remaining[i] -= 1
            if bar:
                bar.update(1)
            if remaining[i] == 0 and on_complete:
                on_complete(i, out[i])  # type: ignore[arg-type]

        self.live_rows = self.rows_for(self._columns([len(p) for p in prompts], sampling.n, sampling.max_new_tokens))
        was_training = self.model.training
        self.model.eval()
        self._lean = (LeanForward(self.model, self.compute_dtype) if self.lean and lean_unsupported(self.model) is None
                      else None)
        try:
            self._decode(prompts, deque(rows), sampling, self._stops(sampling), finish)
        finally:
            self._lean = None
            if was_training:
                self.model.train()
            if bar:
                bar.close()
        return out  # type: ignore[return-value]

    def rows_for(self, columns: int) -> int:
        """Rows decoded together when each may hold `columns` tokens: `batch_size`, or fewer under `kv_cache_gb`."""
        if self.kv_cache_gb is None:
            return self.batch_size
        return rows_within(self.kv_cache_gb, columns * kv_bytes_per_token(self.model, self._cache_dtype()),
                           self.batch_size)

    def _cache_dtype(self) -> torch.dtype | None:
        """What the KV cache holds: the lean forward's compute dtype when it has one."""
        return self.compute_dtype if self.lean and lean_unsupported(self.model) is None else None

    def _columns(self, prompt_lengths: list[int], n: int, max_new_tokens: int) -> int:
        """The most columns a row's KV cache can reach in a call: the longest prompt plus `max_new_tokens`
        when every sequence fits in one batch; twice `max_new_tokens` when sequences join a running batch
        (a row that joins is left-padded to the width of rows already up to `max_new_tokens` along)."""
        columns = max(prompt_lengths, default=0) + max_new_tokens
        if self.kv_cache_gb is None:
            return columns
        if self.rows_for(columns) < n * len(prompt_lengths):
            return columns + max_new_tokens
        return columns

    def memory_estimate(self, stage: str, prompt_lengths: list[int], max_new_tokens: int) -> str:
        """The line evaluation prints when it starts: weights, the lean forward's copies, the KV cache of the
        rows decoded together (`rows_for`), each sized as `_columns` (one entry per sequence)."""
        columns = self._columns(prompt_lengths, 1, max_new_tokens)
        rows = min(self.rows_for(columns), len(prompt_lengths) or 1)
        uses_lean = self.lean and lean_unsupported(self.model) is None
        copies = lean_copy_bytes(self.model, self.compute_dtype) / 1024 ** 3 if uses_lean else 0.0
        return describe_estimate(stage, eval_estimate(self.model, rows, columns, copies, self._cache_dtype()),
                                 f"{rows} rows x {columns} tokens decoded together", "summary.json")

    def _stops(self, sampling: SamplingParams) -> _Stops:
        """Stop token ids, plus stop strings that the tokenizer encodes as one token (checked by id)."""
        ids, strings, longest = set(sampling.stop_token_ids), [], 1
        for s in sampling.stop_strings:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
            else:
                strings.append(s)
                longest = max(longest, len(enc), len(s))  # a token holds at least one character
        return _Stops(torch.tensor(sorted(ids), dtype=torch.long, device=self.device), strings, longest + 1)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """Logits of the last position [B, V]. Only that position goes through the output layer: a prefill
        of 64 prompts x 500 tokens x a 151k vocabulary would otherwise materialise 19 GB of logits."""
        if self._lean is not None:
            return self._lean(ids, mask, positions, cache)
        kwargs = {"logits_to_keep": 1} if self._keep_arg else {}
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **cache_kwargs(cache), **kwargs)
        except TypeError as e:  # remote-code models without the argument
            if "logits_to_keep" not in str(e):
                raise
            self._keep_arg = False
            return self._forward(ids, mask, positions, cache)
        return out.logits[:, -1, :]

    def _prefill(self, prompts: list[list[int]], rows: list[_Row], reserve: int | None = None) -> _Batch:
        """A batch for `rows` (the prompt of each given in `prompts`) with its first logits. Rows that share
        a prompt (the n samples of one question) share its prefill: each distinct prompt is run once and
        its cache rows copied, so GRPO's groups of 8 cost one prompt forward, not eight. `reserve` (the
        request's max_new_tokens) sizes the lean cache for the tokens still to come."""
        from transformers import DynamicCache

        device = self.device
        ids, mask, copy_of = distinct_left_padded(prompts, self.pad_id)  # [U, W], [U, W], [B]
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [U, W]
        cache = self._lean.new_cache(reserve) if self._lean is not None else DynamicCache()
        logits = self._forward(ids, mask, positions, cache)  # [U, V]
        if len(ids) < len(prompts):
            idx = copy_of.to(device)  # [B]
            cache.batch_select_indices(idx)
            mask, positions, logits = mask[idx], positions[idx], logits[idx]
        return _Batch(cache, mask, positions[:, -1:] + 1, rows, logits)

    @torch.inference_mode()
    def _decode(self, prompts, queue: deque, sampling: SamplingParams, stops: _Stops, finish) -> None:
        """Decode every row of `queue`, calling `finish(row)` as each one ends.

        A finished row keeps its slot (its next input is padding, its output ignored) until enough rows
        have finished to make a compaction worth one copy of the cache: dropping rows one at a time would
        copy the whole cache at almost every step. Compaction frees slots for waiting rows.
        """
        batch: _Batch | None = None
        refill_at = max(1, int(self.live_rows * self.refill))
        pad = torch.tensor(self.pad_id, device=self.device)
        while queue or batch is not None:
            if batch is not None:
                n_done = sum(r.done for r in batch.rows)
                if n_done and (n_done >= refill_at or 2 * n_done >= len(batch.rows)):
                    _compact(batch)
            free = self.live_rows - (len(batch.rows) if batch else 0)
            if queue and (batch is None or (free >= min(refill_at, len(queue)) and _mergeable(batch.cache))):
                new = [queue.popleft() for _ in range(min(free, len(queue)))]
                for row in new:
                    row.rng = random.Random(row.seed)
                fresh = self._prefill([prompts[r.slot[0]] for r in new], new, sampling.max_new_tokens)
                batch = fresh if batch is None else _merge(batch, fresh)
            logits = batch.logits  # [B, V]
            if sampling.min_new_tokens and stops.ids.numel():
                young = [len(r.tokens) < sampling.min_new_tokens for r in batch.rows]
                if all(young):  # the usual case: rows that started together, one indexing op
                    logits[:, stops.ids] = float("-inf")
                elif any(young):
                    rows = torch.tensor(young, device=logits.device).nonzero()  # [Y, 1]
                    logits[rows, stops.ids[None, :]] = float("-inf")
            uniforms = None
            if sampling.temperature > 0:  # finished rows draw nothing: their streams stay untouched
                uniforms = torch.tensor([0.0 if r.done else r.rng.random() for r in batch.rows],
                                        dtype=torch.float64)  # [B]
            tok = sample_next(logits.float(), sampling.temperature, sampling.top_p, uniforms)  # [B]
            tok_list, is_stop = torch.stack([tok, torch.isin(tok, stops.ids).long()]).tolist()  # one sync
            live, any_done = 0, False
            for row, t, stop in zip(batch.rows, tok_list, is_stop):
                if row.done:
                    any_done = True
                    continue
                row.tokens.append(t)  # a stop token stays in token_ids (training needs it)
                if stop or (stops.strings and self._hit_stop_string(row.tokens, stops)):
                    row.finish_reason = "stop"
                elif (sampling.stop_repetition and len(row.tokens) % REPETITION_CHECK_EVERY == 0
                      and self._ends_in_loop(row.tokens)):
                    row.finish_reason = "repetition"
                elif len(row.tokens) < sampling.max_new_tokens:
                    live += 1
                    continue
                row.done, row.rng = True, None
                any_done = True
                finish(row)
            if not live:
                batch = None
                continue
            if any_done:
                done = torch.tensor([r.done for r in batch.rows], device=tok.device)  # [B]
                tok = torch.where(done, pad, tok)  # [B] finished rows are fed padding
                batch.mask = torch.cat([batch.mask, (~done).long()[:, None]], dim=1)  # [B, W + 1]
            else:
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
            batch.logits = self._forward(tok[:, None], batch.mask, batch.next_pos, batch.cache)
            batch.next_pos = batch.next_pos + 1

    def _ends_in_loop(self, tokens: list[int]) -> bool:
        """A loop in the token ids (cheap, vectorised), confirmed on the decoded text: the text test is
        the one evaluation's `repetition_rate` counts, so every sequence stopped here is counted there."""
        return tokens_end_in_loop(tokens) and ends_in_loop(
            self.tokenizer.decode(tokens[-REPETITION_WINDOW:], skip_special_tokens=True))

    def _hit_stop_string(self, tokens: list[int], stops: _Stops) -> bool:
        tail = self.tokenizer.decode(tokens[-stops.tail_tokens:], skip_special_tokens=False)
        return any(s in tail for s in stops.strings)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                uniforms: torch.Tensor | None) -> torch.Tensor:
    """One token per row from `logits` [B, V]: greedy at temperature 0, else tempered nucleus sampling.

    Sampling is by inverse CDF from one uniform number per row (`uniforms` [B], in [0, 1)), drawn by the
    caller from each row's own stream: the draw is then independent of the other rows and of the device,
    and a tiny change in the probabilities (another batch shape) almost never changes the token.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # [B, V]
    order = None
    if top_p < 1.0:
        probs, order = nucleus(probs, top_p)  # [B, K] descending, [B, K] their token ids
    cdf = probs.double().cumsum(dim=-1)  # [B, V or K]
    target = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]  # [B, 1]
    # the first index whose cumulative mass exceeds the target; zero-probability tokens are never it
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)  # [B, 1]
    return (pick if order is None else order.gather(-1, pick)).squeeze(-1)


NUCLEUS_FIRST_K = 1024  # candidates tried first; a 49k-151k vocabulary's nucleus at p = 0.95 is usually far smaller


def nucleus(probs: torch.Tensor, top_p: float, k: int = NUCLEUS_FIRST_K) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p rule without sorting the vocabulary: (kept probabilities [B, K] in descending order, zero
    past each row's nucleus; their token ids [B, K]).

    The rule keeps the smallest prefix of the tokens sorted by probability whose mass reaches `top_p` (the
    first token always stays). When the K most likely tokens of every row already hold that mass, the
    prefix lies among them, so `topk(K)` gives exactly the sorted prefix; otherwise K doubles and it tries
    again (up to the whole vocabulary, which is the sort). A sort of 49k entries per row per step cost as
    much as the model's forward on 64 rows; `topk(1024)` about a tenth of it.
    """
    vocab = probs.shape[-1]
    k = min(k, vocab)
    while True:
        top, ids = probs.topk(k, dim=-1)  # [B, K] descending
        mass = top.cumsum(dim=-1)  # [B, K]
        if k == vocab or bool((mass[:, -1] >= top_p).all()):
            return top.masked_fill((mass - top) >= top_p, 0.0), ids
        k = min(2 * k, vocab)
