"""The one entry point that evaluation and GRPO both call: ``grade(response, gold)``."""

from __future__ import annotations

from dataclasses import dataclass

from srlm.grading.equivalence import Gold, compare, parse_gold
from srlm.grading.extract import extract_answer, sanitize


@dataclass(frozen=True)
class Grade:
    """Verdict on one response.

    ``correct``: the extracted answer equals the gold. ``extracted``: the answer text found (``None``
    if none). ``method``: the extraction rule that fired (see ``extract.py``). ``format_ok``: the
    response is exactly ``<think>…</think><answer>…</answer>`` (the paper's format).
    """

    correct: bool
    extracted: str | None
    method: str
    format_ok: bool


def format_ok(response: str) -> bool:
    """The response (sanitised) is in the paper's format: see ``is_tagged``."""
    return is_tagged(sanitize(response))


def is_tagged(text: str) -> bool:
    """``<think>…</think>`` then ``<answer>…</answer>``, nothing else but whitespace: the paper's format,
    the one check behind the format reward, the format rate and which teacher traces are kept verbatim.

    Written with ``str`` searches, not one regex, so the check is linear on any input; each tag
    must occur exactly once, in that order.
    """
    text = text.strip()
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        if text.count(tag) != 1:
            return False
    think_end = text.index("</think>")
    answer_start = text.index("<answer>")
    return think_end < answer_start and not text[think_end + len("</think>"):answer_start].strip()


def grade(response: str, gold: str | Gold, exact: bool = False) -> Grade:
    """Extract the final answer of ``response`` and compare it with ``gold``. ``exact``: the gold is an
    exact value, no rounding tolerance (the dataset's ``exact_answers``: ``data.sources.exact_answers``)."""
    extraction = extract_answer(response)
    g = gold if isinstance(gold, Gold) else parse_gold(sanitize(gold), exact)
    verdict = compare(extraction.answer, g)
    return Grade(
        correct=verdict.equal,
        extracted=extraction.answer,
        method=extraction.method,
        format_ok=format_ok(response),
    )
