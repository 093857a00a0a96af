"""Why a response was graded as it was: the extraction steps and the comparison that decided, as text
lines (``srlm grade --explain``). It re-runs the same functions ``grade`` uses and reports what each
found; the verdict it prints is ``grade``'s own."""

from __future__ import annotations

from srlm.grading.answer import parse_answer
from srlm.grading.equivalence import _ROUNDED_GOLD_DIGITS, compare, parse_gold
from srlm.grading.values import exact_value
from srlm.grading.extract import (_after_gsm8k_mark, _after_phrase, _answer_tag_content, boxed_answer, boxes,
                                  extract_answer, last_number, sanitize, strip_think)
from srlm.grading.grade import grade
from srlm.grading.normalize import normalize_answer

_SHOWN_CHARS = 80


def _show(text: str | None) -> str:
    if text is None:
        return "none"
    text = " ".join(text.split())
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + "…")


def describe_shape(shape: tuple) -> str:
    """A short description of a parsed answer: ``number 7/2``, ``list of 2``, ``equation (=)``…"""
    kind = shape[0]
    if kind == "scalar":
        s = shape[1]
        if s.tree is None:
            return f"expression outside the parser's grammar ({s.failure})"
        value = exact_value(s.tree)
        unit = f" with unit {s.unit}" if s.unit else ""
        return (f"number {value}{unit}" if value is not None else f"expression {s.text}{unit}")
    if kind in ("list", "set", "union", "ratio"):
        return f"{kind} of {len(shape[1])}"
    if kind == "seq":
        return f"tuple/interval {shape[1]}…{shape[2]} of {len(shape[3])}"
    if kind == "rel":
        return f"relation ({' '.join(shape[1])})"
    if kind == "matrix":
        return f"matrix {len(shape[1])}x{len(shape[1][0]) if shape[1] else 0}"
    if kind == "choice":
        return f"choice ({shape[1]})"
    if kind == "text":
        return f"text {shape[1]!r}"
    return kind


def _rounding_note(g) -> str:
    if g.shape[0] != "scalar" or not g.shape[1].decimal:
        return ""
    if not g.tolerant:
        return " (exact benchmark: no rounding tolerance)"
    s = g.shape[1]
    if s.scientific or s.significant_digits >= _ROUNDED_GOLD_DIGITS:
        return f" (a rounded value: more precise answers within half of 1e{s.last_digit} match)"
    return f" (a short decimal, fewer than {_ROUNDED_GOLD_DIGITS} significant digits: exact)"


def explain(response: str, gold: str, exact: bool = False) -> list[str]:
    """The extraction steps and the comparison, one line each, ending with the verdict."""
    text = sanitize(response)
    lines = []
    body = strip_think(text)
    if body is None:
        lines.append("think: <think> opened and never closed: no answer")
    elif body is not text:
        lines.append(f"think: closed block skipped; {len(body)} characters after </think> are searched")
    else:
        lines.append(f"think: none; all {len(text)} characters are searched")
    if body is not None:
        tag = _answer_tag_content(body)
        lines.append(f"answer tag: {_show(tag) if tag is not None else 'none'}")
        span = tag if tag is not None else body
        found = boxes(span)
        if found:
            merged = boxed_answer(span)
            note = f" -> read together as {_show(merged[0])}" if merged and merged[0] != found[-1][0] else ""
            lines.append(f"boxes: {len(found)} non-empty, last {_show(found[-1][0])}{note}")
        else:
            lines.append("boxes: none (empty boxes are skipped)")
        phrase = _after_phrase(span)
        shown = (_show(phrase[0]) + (" (strong: overrides an earlier box)" if phrase[2] else "")) if phrase else "none"
        lines.append(f"answer phrase: {shown}")
        mark = _after_gsm8k_mark(span)
        lines.append(f"#### line: {_show(mark[0]) if mark else 'none'}")
        lines.append(f"last number: {_show(last_number(span))}; as a committed answer: "
                     f"{_show(last_number(span, committed=True))}")
    extraction = extract_answer(text)
    lines.append(f"rule that fired: {extraction.method} -> {_show(extraction.answer)}")
    g = parse_gold(sanitize(gold), exact)
    lines.append(f"gold: {_show(gold)} -> normalised {_show(g.norm.text)}: {describe_shape(g.shape)}"
                 + _rounding_note(g))
    if extraction.answer is not None:
        p = normalize_answer(extraction.answer)
        marks = [m for m in ("percent", "degrees", "currency") if getattr(p, m)]
        lines.append(f"answer: normalised {_show(p.text)}"
                     + (f" ({', '.join(marks)} sign stripped)" if marks else "")
                     + f": {describe_shape(parse_answer(p.text))}")
    verdict = compare(extraction.answer, g)
    lines.append(f"comparison: {verdict.tier} tier decided {'equal' if verdict.equal else 'not equal'}")
    result = grade(response, g)
    lines.append(f"verdict: {'correct' if result.correct else 'wrong'} (format_ok={result.format_ok})")
    return lines
