"""Tokenisation of training examples and batching.

Prompt and completion are tokenised separately and concatenated, so the boundary between them is exact
and the loss mask (`labels == -100` on prompt tokens) never straddles a token.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def n_predicted(self) -> int:
        """Positions that carry loss: labels after the first (the first token is never predicted)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


def tokenize_pair(tokenizer, prompt: str, completion: str, loss_on: str = "completion") -> TokenizedExample:
    """Token ids of prompt + completion, with the prompt masked out unless `loss_on == "all"`."""
    p = tokenizer.encode(prompt, add_special_tokens=False)
    c = tokenizer.encode(completion, add_special_tokens=False)
    labels = (list(p) if loss_on == "all" else [IGNORE_INDEX] * len(p)) + list(c)
    return TokenizedExample(list(p) + list(c), labels)


@dataclass
class LengthFilterReport:
    n_in: int
    n_too_long: int

    @property
    def n_out(self) -> int:
        return self.n_in - self.n_too_long


def filter_by_length(examples: list[TokenizedExample], max_length: int):
    """Drop examples longer than `max_length` tokens (never truncate: a cut answer teaches the wrong end)."""
    kept = [e for e in examples if len(e.input_ids) <= max_length]
    return kept, LengthFilterReport(len(examples), len(examples) - len(kept))


def pad_batch(examples: list[TokenizedExample], pad_id: int):
    """Right-padded tensors `input_ids`, `attention_mask`, `labels`, each [B, T_max]."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def distinct_left_padded(rows: list[list[int]], pad_id: int):
    """The distinct rows of `rows`, left-padded (each right-aligned, so every row's next token is at the
    same column): ids [U, W], mask [U, W] (1 on real tokens), and for each input row the index [N] of its
    distinct row. Samples of one prompt (GRPO's groups, evaluation's n) share one row."""
    import torch

    distinct: dict[tuple[int, ...], int] = {}
    index = [distinct.setdefault(tuple(r), len(distinct)) for r in rows]
    width = max(len(r) for r in distinct)
    ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for u, r in enumerate(distinct):
        ids[u, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[u, width - len(r):] = 1
    return ids, mask, torch.tensor(index, dtype=torch.long)


def length_grouped_batches(lengths: list[int], batch_size: int, rng) -> list[list[int]]:
    """Batches of indices with similar lengths (less padding), in random batch order.

    Indices are shuffled, cut into mega-batches of 16 batches, sorted by length inside each mega-batch,
    then batched: the order stays random across the epoch while each batch is length-homogeneous.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------------------------ packing


def pack_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """Group example indices into rows of at most `row_length` tokens (first-fit decreasing).

    Examples are never split: a row holds whole examples, so every example keeps its own attention
    block. An example longer than `row_length` gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_length - lengths[i])
    return rows


def packed_batch(examples: list[TokenizedExample], pad_id: int, row_length: int):
    """Padding-free batch: examples concatenated into rows, `position_ids` restarting at 0 per example.

    Returns `input_ids`, `position_ids`, `labels`, each [R, L] with L the fullest row's length. A model
    given `position_ids` and no attention mask (transformers' packed-sequence path) lets each token attend
    only within its own example. The first label of each example is IGNORE_INDEX, so the last token of one
    example never learns to predict the first of the next. Row tails are padding: their positions restart
    at 0 too (a segment of their own) and their labels are ignored.
    """
    import torch

    rows = pack_rows([len(e.input_ids) for e in examples], row_length)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(e.labels[1:])
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": pos, "labels": labels}
