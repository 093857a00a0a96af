"""Procedurally generated GSM8K-style arithmetic word problems: the embedded default task.

A problem is a short story over one quantity that changes through `n_ops` operations (add, take away,
multiply, share equally). Its reference solution is written the way GSM8K writes them: one line of
reasoning per step with the computation, then `#### <answer>`.

Determinism: every problem is a pure function of (seed, index), so a split is reproducible anywhere.
Disjointness: a question's split is decided by a hash of its text (`split_of`), and each split keeps only
its own questions, so train, validation and test can never share a question, whatever their sizes.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

NAMES = ["Ava", "Ben", "Cy", "Dan", "Eli", "Fay", "Gus", "Ida", "Jo", "Kai", "Lea", "Max", "Ned", "Pia", "Sam",
         "Tom"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "eggs", "beads", "cups"]

# Split name -> offset mixed into the seed, so splits draw from different random streams.
SPLIT_STREAMS = {"train": 0, "test": 1_000_003, "validation": 2_000_029}


def split_of(question: str) -> str:
    """The one split a question text may belong to: 10% test, 10% validation, 80% train."""
    bucket = zlib.crc32(question.encode("utf-8")) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


@dataclass(frozen=True)
class Step:
    """One operation of a problem: how it reads in the question and in the solution."""

    question: str
    solution: str
    value: int


def _step(rng: random.Random, name: str, item: str, current: int) -> Step:
    """Draw one operation that keeps the running value a positive integer of at most 30.

    Small numbers (operands up to 9) and short sentences on purpose: the demo's tiny model reads
    characters and trains for minutes on a CPU, so the arithmetic must be learnable in that budget (a few
    hundred facts) while multi-step problems still leave room for RL to improve.
    """
    kinds = ["add", "sub", "mul", "div"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "add":
            if current > 29:
                continue
            k = rng.randint(1, min(9, 30 - current))
            new = current + k
            q = f"{name} gets {k} more."
            s = f"{current} + {k} = {new}"
        elif kind == "sub":
            if current < 3:
                continue
            k = rng.randint(1, min(9, current - 1))
            new = current - k
            q = f"{name} gives away {k}."
            s = f"{current} - {k} = {new}"
        elif kind == "mul":
            k = rng.randint(2, 3)
            new = current * k
            if new > 30:
                continue
            q = f"{name}'s {item} become {k} times as many."
            s = f"{current} * {k} = {new}"
        else:
            divisors = [d for d in (2, 3) if current % d == 0]
            if not divisors:
                continue
            k = rng.choice(divisors)
            new = current // k
            q = f"{name} splits them into {k} equal parts and keeps one."
            s = f"{current} / {k} = {new}"
        return Step(q, f"{s} {item}.", new)
    raise AssertionError("unreachable: 'add' or 'sub' always applies")


def make_problem(seed: int, index: int, n_ops: int) -> dict:
    """The canonical record of problem `index` in the stream `seed`, with `n_ops` operations."""
    rng = random.Random(f"srlm-synthetic:{seed}:{index}:{n_ops}")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, 20)
    q_parts = [f"{name} has {value} {item}."]
    s_parts: list[str] = []
    for _ in range(n_ops):
        st = _step(rng, name, item, value)
        q_parts.append(st.question)
        s_parts.append(st.solution)
        value = st.value
    q_parts.append(f"How many {item} does {name} have?")
    solution = "\n".join(s_parts) + f"\n#### {value}"
    return {
        "id": f"synthetic-{seed}-{index}",
        "source": "synthetic",
        "question": " ".join(q_parts),
        "answer": str(value),
        "solution": solution,
        "meta": {"n_ops": n_ops, "seed": seed, "index": index},
    }


def make_split(split: str, n: int, seed: int = 0, min_ops: int = 1, max_ops: int = 3) -> list[dict]:
    """`n` distinct problems of `split`, with difficulty (number of operations) cycling min_ops..max_ops."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {sorted(SPLIT_STREAMS)}")
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")
    stream = seed * 7_919 + SPLIT_STREAMS[split]
    levels = list(range(min_ops, max_ops + 1))
    records: list[dict] = []
    seen: set[str] = set()
    index = 0
    while len(records) < n:
        n_ops = levels[len(records) % len(levels)]
        rec = make_problem(stream, index, n_ops)
        index += 1
        if split_of(rec["question"]) != split or rec["question"] in seen:
            continue
        seen.add(rec["question"])
        records.append(rec)
    return records
