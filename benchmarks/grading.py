"""Speed of the grader: prints one JSON object with cases per second and median/p99/max ms per case,
on real responses and on hostile ones (``srlm_hostile``: the worst case).

    python benchmarks/grading.py [FILE.jsonl] [--response-field response] [--gold-field gold]
                                 [--data DIR] [--limit N] [--math-verify] [--audit-limit N]

Without FILE, cases are built from the shared data folder (``../shared/data`` beside the repo):
MATH500 solutions against their answers, GSM8K test solutions against their final numbers, Minerva
solutions against their boxed answers, and the same responses against the *next* problem's gold, so
the slower "not equal" path is timed too. If FILE rows have a boolean ``expected`` field, accuracy
is reported as well. ``--math-verify`` times (and scores) math-verify on the same cases, for
comparison only. ``grader_audit`` is what evaluation's grader audit adds per evaluated sample: math-verify's
verdict through the grading worker (``srlm.grading.symbolic.math_verify_equal``), timed on the first
``--audit-limit`` cases (0 skips it), with its mean as ``added_ms_per_sample``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def _last_boxed(text: str) -> str:
    from srlm.grading.extract import last_boxed

    found = last_boxed(text)
    return found[0] if found else ""


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def default_cases(data: Path) -> list[tuple[str, str, bool | None]]:
    """(response, gold, expected) from MATH500, GSM8K test and Minerva, matched and shifted."""
    groups = []
    math500 = _read_jsonl(data / "math500" / "test.jsonl")
    groups.append([(r["solution"], r["answer"]) for r in math500])
    gsm8k = _read_jsonl(data / "gsm8k" / "test.jsonl")
    groups.append([(r["answer"], r["answer"].split("####")[-1].strip().replace(",", "")) for r in gsm8k])
    minerva = _read_jsonl(data / "minerva_math" / "test.jsonl")
    groups.append([(r["solution"], _last_boxed(r["solution"])) for r in minerva])
    cases: list[tuple[str, str, bool | None]] = []
    for group in groups:
        cases += [(resp, gold, True) for resp, gold in group]
        # Each response against the next problem's gold: mostly "not equal", not labelled.
        cases += [(group[i][0], group[(i + 1) % len(group)][1], None) for i in range(len(group))]
    return cases


def file_cases(path: Path, response_field: str, gold_field: str) -> list[tuple[str, str, bool | None]]:
    rows = _read_jsonl(path)
    return [(str(r[response_field]), str(r[gold_field]), r.get("expected")) for r in rows]


def measure(grade_fn, cases) -> dict:
    times, right, labelled = [], 0, 0
    for response, gold, expected in cases:
        start = time.perf_counter()
        correct = grade_fn(response, gold)
        times.append(time.perf_counter() - start)
        if expected is not None:
            labelled += 1
            right += correct == expected
    times_ms = sorted(t * 1000 for t in times)
    result = {
        "cases": len(cases),
        "cases_per_second": round(len(cases) / sum(times), 1),
        "median_ms": round(statistics.median(times_ms), 4),
        "p99_ms": round(times_ms[min(len(times_ms) - 1, int(0.99 * len(times_ms)))], 4),
        "max_ms": round(times_ms[-1], 2),
        "mean_ms": round(sum(times_ms) / len(times_ms), 4),
    }
    if labelled:
        result["labelled"] = labelled
        result["accuracy"] = round(right / labelled, 4)
    return result


def hostile_responses() -> list[str]:
    """The hostile inputs of tests/unit/test_grading_hostile.py (one list for the tests and this benchmark)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile", REPO / "tests" / "unit" / "test_grading_hostile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.HOSTILE.values())


def _srlm_grade(response: str, gold: str) -> bool:
    from srlm.grading import grade

    return grade(response, gold).correct


def _audit_verdict(response: str, gold: str) -> bool:
    from srlm.grading.symbolic import math_verify_equal

    return bool(math_verify_equal(gold, response))


def _math_verify_grade(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(response)))
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", help="JSONL cases (default: built from the shared data)")
    parser.add_argument("--response-field", default="response")
    parser.add_argument("--gold-field", default="gold")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder for the default cases")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N cases")
    parser.add_argument("--math-verify", action="store_true", help="also time math-verify (comparison only)")
    parser.add_argument("--audit-limit", type=int, default=1000,
                        help="cases to time the grader audit on (math-verify in the grading worker; 0: skip)")
    args = parser.parse_args(argv)

    if args.file:
        cases = file_cases(Path(args.file), args.response_field, args.gold_field)
    else:
        data = Path(args.data)
        if not data.is_dir():
            print(f"no data folder at {data}; pass FILE.jsonl or --data", file=sys.stderr)
            return 2
        cases = default_cases(data)
    cases = cases[: args.limit] if args.limit else cases

    _srlm_grade("\\boxed{1}", "1")  # import and warm up outside the timed loop
    report = {"srlm": measure(_srlm_grade, cases)}
    # The worst case: the test suite's hostile responses (megabyte inputs, power towers, deep nesting).
    hostile = [(r, gold, None) for r in hostile_responses() for gold in ("42", "\\frac{1}{2}")]
    report["srlm_hostile"] = measure(_srlm_grade, hostile)
    if args.audit_limit:
        _audit_verdict("\\boxed{1}", "1")  # starts the worker outside the timed loop
        # Spread over the cases (every k-th), so each data set and both labelled and shifted pairs count.
        step = max(1, len(cases) // args.audit_limit)
        audited = cases[::step][: args.audit_limit]
        verdicts: list[bool] = []

        def audit_verdict(response: str, gold: str) -> bool:
            verdicts.append(_audit_verdict(response, gold))
            return verdicts[-1]

        audit = measure(audit_verdict, audited)
        audit["added_ms_per_sample"] = round(audit.pop("mean_ms"), 3)
        # How often the two graders agree on these cases (what summary.json's `agreement` measures).
        agree = sum(_srlm_grade(r, g) == v for (r, g, _), v in zip(audited, verdicts))
        audit["agreement_with_srlm"] = round(agree / len(audited), 4)
        report["grader_audit"] = audit
    if args.math_verify:
        _math_verify_grade("\\boxed{1}", "1")
        report["math_verify"] = measure(_math_verify_grade, cases)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":  # the guard also keeps the grading worker (spawned) from re-running main
    sys.exit(main())
