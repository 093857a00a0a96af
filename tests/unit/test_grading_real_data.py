"""Gold self-consistency on the shared benchmark files: each reference solution, used as the
response, must be graded correct against its own gold (at least 99.9% per dataset).

Skipped when ``../shared/data`` (beside the repository) is absent.
"""

import json
from pathlib import Path

import pytest

from srlm.grading import grade
from srlm.grading.extract import boxed_answer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MIN_RATE = 0.999

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")


def _rows(relative: str) -> list[dict]:
    with (DATA / relative).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k(split: str):
    return [(r["answer"], r["answer"].split("####")[-1].strip().replace(",", "")) for r in _rows(f"gsm8k/{split}.jsonl")]


def _boxed_gold(relative: str):
    """The answer a reference solution states: its last box, or the run of boxes it ends with
    (`\\boxed{(-2,18)}$ and $\\boxed{(8,38)}` states both intersection points)."""
    pairs = []
    for r in _rows(relative):
        box = boxed_answer(r["solution"])
        pairs.append((r["solution"], box[0] if box else ""))
    return pairs


CASES = {
    "gsm8k_train": lambda: _gsm8k("train"),
    "gsm8k_test": lambda: _gsm8k("test"),
    "math500": lambda: [(r["solution"], r["answer"]) for r in _rows("math500/test.jsonl")],
    "math_train": lambda: _boxed_gold("math/train.jsonl"),
    "minerva_math": lambda: _boxed_gold("minerva_math/test.jsonl"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_solutions_grade_as_correct(name):
    pairs = CASES[name]()
    misses = [(gold, g.extracted) for resp, gold in pairs if not (g := grade(resp, gold)).correct]
    rate = 1 - len(misses) / len(pairs)
    assert rate >= MIN_RATE, f"{name}: {rate:.4%} ({len(misses)} misses), e.g. {misses[:5]}"


def test_math500_neighbouring_answers_are_not_confused():
    """Distinct MATH500 answers (sorted, each against the next) are judged different, except the
    pairs that are the same number with a unit or degree sign."""
    golds = sorted({r["answer"] for r in _rows("math500/test.jsonl")})
    equal = {(a, b) for a, b in zip(golds, golds[1:]) if grade(f"\\boxed{{{b}}}", a).correct}
    assert equal == {("120", "120^\\circ"), ("15", "15\\mbox{ cm}^2"), ("30", "30^\\circ"), ("36", "36^\\circ")}
