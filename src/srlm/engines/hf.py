"""Generation with a transformers model: batched KV-cache decoding on CPU or GPU.

It decodes the model object it is given (the training policy itself in GRPO: no copy, no weight sync).
Prompts are sorted by length and batched so padding is small; rows that finish are dropped from the
batch and from the KV cache, so a batch costs as much as its live sequences, not its longest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from srlm.engines.base import Completion, SamplingParams


@dataclass
class _Row:
    """One sequence being decoded: where its output goes and what it has produced so far."""

    slot: tuple[int, int]  # (prompt index, sample index)
    tokens: list[int]
    finish_reason: str | None = None


class HFEngine:
    """`generate` for a `transformers` causal LM (or a peft wrapper of one)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, progress: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        jobs = [(i, j) for i in range(len(prompts)) for j in range(sampling.n)]
        # Longest first: the slowest batches start early, and equal lengths share a batch (less padding).
        jobs.sort(key=lambda ij: -len(prompts[ij[0]]))
        out: list[list[Completion | None]] = [[None] * sampling.n for _ in prompts]
        gen = torch.Generator(device="cpu")
        gen.manual_seed(sampling.seed if sampling.seed is not None else torch.seed() % (2**63))
        stop_single = self._single_token_stops(sampling)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="generate", unit="seq", leave=False)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(jobs), self.batch_size):
                batch = jobs[start:start + self.batch_size]
                rows = self._decode_batch([prompts[i] for i, _ in batch], batch, sampling, stop_single, gen)
                for row in rows:
                    i, j = row.slot
                    out[i][j] = Completion(
                        token_ids=row.tokens,
                        text=self.tokenizer.decode(row.tokens, skip_special_tokens=True),
                        finish_reason=row.finish_reason or "length",
                    )
                if bar:
                    bar.update(len(batch))
        finally:
            if was_training:
                self.model.train()
            if bar:
                bar.close()
        return out  # type: ignore[return-value]

    def _single_token_stops(self, sampling: SamplingParams) -> set[int]:
        """Stop token ids, plus stop strings that the tokenizer encodes as one token (checked by id)."""
        return set(sampling.stop_token_ids) | self._stop_string_ids(sampling)

    @torch.inference_mode()
    def _decode_batch(self, prompts, slots, sampling: SamplingParams, stop_ids: set[int], gen) -> list[_Row]:
        from transformers import DynamicCache

        device = self.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every row's next token is at the same column
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        rows = [_Row(slot, []) for slot in slots]
        live = list(range(len(rows)))  # row index of each batch position
        multi_token_stops = [s for s in sampling.stop_strings
                             if len(self.tokenizer.encode(s, add_special_tokens=False)) != 1]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True).logits[:, -1, :]  # [B, V]
        next_pos = positions[:, -1:] + 1  # [B, 1]
        for step in range(sampling.max_new_tokens):
            if step < sampling.min_new_tokens and stop_ids:
                logits[:, list(stop_ids)] = float("-inf")
            tok = sample_next(logits.float(), sampling.temperature, sampling.top_p, gen)  # [B]
            keep: list[int] = []
            tok_list = tok.tolist()
            for b, t in enumerate(tok_list):
                row = rows[live[b]]
                row.tokens.append(t)
                if t in stop_ids:  # kept in token_ids (training needs it); special ones leave the text
                    row.finish_reason = "stop"
                elif multi_token_stops and self._hit_stop_string(row.tokens, multi_token_stops):
                    row.finish_reason = "stop"
                else:
                    keep.append(b)
            if not keep or step == sampling.max_new_tokens - 1:
                break
            if len(keep) < len(live):  # drop finished rows from the batch and the cache
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                tok, mask, next_pos = tok[idx], mask[idx], next_pos[idx]
                live = [live[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                                past_key_values=cache, use_cache=True).logits[:, -1, :]
            next_pos = next_pos + 1
        return rows

    def _stop_string_ids(self, sampling: SamplingParams) -> set[int]:
        out = set()
        for s in sampling.stop_strings:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1:
                out.add(enc[0])
        return out

    def _hit_stop_string(self, tokens: list[int], stops: list[str]) -> bool:
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=False)
        return any(s in tail for s in stops)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row from `logits` [B, V]: greedy at temperature 0, else tempered nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # [B, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        cut = (cum - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(cut, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    # Sample on the CPU generator so results are reproducible across devices.
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
