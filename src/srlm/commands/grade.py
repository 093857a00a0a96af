"""`srlm grade`: grade a JSONL file of responses against gold answers.

    srlm grade FILE.jsonl [--gold-field gold] [--response-field response] [--benchmark NAME] [--explain]

Writes one JSON object per input line to stdout, in order: ``correct``, ``extracted``, ``method``
(the extraction rule that fired) and ``format_ok``. A summary goes to stderr. The whole file is read
and checked before any grading, so a malformed line fails fast with its file and line number. The
summary gives the accuracy of each extraction rule (``by_method``). With ``--explain``, each line's
verdict is printed as text instead: the extraction steps (think block, answer tags, boxes, answer
phrase, ``####`` line, last number, the rule that fired) and the comparison that decided.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from srlm.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `grade` verb."""
    parser = subparsers.add_parser(
        "grade",
        help="grade responses in a JSONL file against gold answers",
        description="Grade each line of a JSONL file: extract the response's final answer and compare it "
                    "with the gold answer. One JSON verdict per line goes to stdout; a summary to stderr.",
    )
    parser.add_argument("file", metavar="FILE.jsonl", help="one JSON object per line, with a response and a gold")
    parser.add_argument("--gold-field", default="gold", help="field holding the gold answer (default: gold)")
    parser.add_argument("--response-field", default="response",
                        help="field holding the model response (default: response)")
    parser.add_argument("--benchmark", default=None, metavar="NAME",
                        help="dataset the golds come from (e.g. gsm8k, math500, minerva_math); a dataset registered "
                             "with exact answers gets no rounding tolerance")
    parser.add_argument("--explain", action="store_true",
                        help="print, per line, the extraction steps and the comparison that decided")
    parser.set_defaults(func=run)


def _field_text(value: Any, field: str, where: str) -> str:
    """A field's value as text: numbers are written out, a one-element list is unwrapped."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: field {field!r} must be a string or a number, not {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def read_pairs(path: Path, response_field: str, gold_field: str) -> list[tuple[str, str]]:
    """(response, gold) for every non-blank line of ``path``; ``UserError`` names the bad line."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    from srlm.data.jsonl import json_objects

    pairs = []
    for row, where in json_objects(path, errors="replace"):
        for field in (response_field, gold_field):
            if field not in row:
                known = ", ".join(sorted(row)) or "none"
                raise UserError(f"{where}: missing field {field!r} (fields present: {known})")
        pairs.append((_field_text(row[response_field], response_field, where),
                      _field_text(row[gold_field], gold_field, where)))
    return pairs


def run(args: argparse.Namespace) -> int:
    from srlm.data.sources import exact_answers
    from srlm.grading import grade  # imported here so `srlm --help` stays fast

    pairs = read_pairs(Path(args.file), args.response_field, args.gold_field)
    if not pairs:  # an accuracy of 0/0 would read as a result
        from srlm.errors import UserError

        raise UserError(f"{args.file}: no lines to grade (the file is empty)")
    exact = exact_answers(args.benchmark)  # the dataset's registration says whether its golds are exact
    start = time.perf_counter()
    correct = failures = 0
    verdicts = []
    out = sys.stdout
    for number, (response, gold) in enumerate(pairs, 1):
        result = grade(response, gold, exact)
        verdicts.append({"method": result.method, "correct": result.correct})
        correct += result.correct
        failures += result.extracted is None
        if args.explain:
            from srlm.grading.explain import explain

            out.write(f"case {number}: {'correct' if result.correct else 'wrong'}\n"
                      + "".join(f"  {line}\n" for line in explain(response, gold, exact)))
            continue
        out.write(json.dumps({
            "correct": result.correct,
            "extracted": result.extracted,
            "method": result.method,
            "format_ok": result.format_ok,
        }, ensure_ascii=False) + "\n")
    out.flush()
    elapsed = time.perf_counter() - start
    n = len(pairs)
    accuracy = correct / n if n else 0.0
    from srlm.grading.audit import accuracy_by_method

    by_method = " ".join(f"{m}={v['n']}@{v['accuracy']:.2f}" for m, v in accuracy_by_method(verdicts).items())
    print(f"graded n={n} accuracy={accuracy:.4f} ({correct}/{n}) extraction_failures={failures} "
          f"time={elapsed:.2f}s by_method(n@accuracy): {by_method or '-'}", file=sys.stderr)
    return 0
