"""Does a response end in a repetition loop? (pure)

A small model sampled at temperature 0.6 sometimes falls into a loop: one sentence, line or paragraph
written again and again until `max_new_tokens`, which at the paper's 32,768 tokens is most of an
evaluation's cost. `tail_loop(seq)` finds the loop that the END of a sequence is made of: a unit of
`period` elements repeated back to back (the last copy may be cut short) over the last `span` elements.
It is a loop when the unit is repeated at least `min_repeats` times AND the repetition covers at least
`min_span` elements, so a short answer said twice, or three identical lines, is not one.

The sequence is anything indexable: the characters of a response (evaluation accounting) or its token ids
(the hf engine's `stop_repetition`). Only exact repetition counts: a model counting "Step 57", "Step 58", ...
never repeats exactly and shows up as truncation, not repetition. A table of values is not a loop either:
its rows differ. Cost: one vectorised comparison per candidate period, candidates being the earlier places
where the last few elements recur; milliseconds on a 32k-token response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Defaults for the characters of a response: at least 4 copies covering at least 200 characters.
MIN_REPEATS = 4
MIN_SPAN_CHARS = 200
# For token ids (the engine's cheap first test before it confirms on the decoded text): the same count
# of copies over at least 64 tokens.
MIN_SPAN_TOKENS = 64
# Only the last `WINDOW` elements are examined: the longest detectable unit is WINDOW / min_repeats.
WINDOW = 8192
# Candidate periods must also repeat the last this-many elements (cheap filter before the full check).
_FILTER = 8


@dataclass(frozen=True)
class Loop:
    period: int  # elements in one repetition
    span: int  # trailing elements covered by the repetition (within the window)

    @property
    def repeats(self) -> float:
        return self.span / self.period


def _as_array(seq: Sequence | str) -> np.ndarray:
    if isinstance(seq, str):
        return np.frombuffer(seq.encode("utf-32-le"), dtype=np.uint32)
    return np.asarray(seq, dtype=np.int64)


def tail_loop(seq: Sequence | str, min_repeats: int = MIN_REPEATS, min_span: int = MIN_SPAN_CHARS,
              window: int = WINDOW) -> Loop | None:
    """The shortest-period loop the end of `seq` consists of, or None (see the module docstring)."""
    a = _as_array(seq[-window:] if len(seq) > window else seq)  # [N]
    n = len(a)
    if n < max(min_span, 2 * min_repeats):
        return None
    # periods p with a[n-1-p] == a[n-1]: the last element recurs p earlier
    periods = (n - 1) - np.flatnonzero(a[:-1] == a[-1])  # [C], descending
    periods = periods[::-1]
    periods = periods[periods * min_repeats <= n]
    for j in range(1, _FILTER):  # keep those where the last _FILTER elements recur too
        ok = periods <= n - 1 - j
        periods = periods[ok]
        periods = periods[a[n - 1 - j - periods] == a[n - 1 - j]]
    for p in periods.tolist():
        need = max(min_span, min_repeats * p)
        if need > n:
            break  # need grows with p
        if np.array_equal(a[n - need + p:], a[n - need:n - p]):  # the last `need` elements have period p
            mismatch = np.flatnonzero(a[p:] != a[:-p])  # k where a[k + p] != a[k]
            start = int(mismatch[-1]) + 1 if len(mismatch) else 0
            return Loop(period=p, span=n - start)
    return None


def ends_in_loop(text: str) -> bool:
    """Whether a response's text ends in a repetition loop (the evaluation's `repetition_rate`)."""
    return tail_loop(text) is not None


def tokens_end_in_loop(token_ids: Sequence[int]) -> bool:
    """Whether generated token ids end in a repetition loop (the engine's `stop_repetition` test)."""
    return tail_loop(token_ids, min_span=MIN_SPAN_TOKENS) is not None
