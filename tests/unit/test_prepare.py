"""Pure preparation: de-duplication, calculator-note stripping, <think>/<answer> formatting, SFT/RL examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from srlm.data.prepare import (
    TAG_INSTRUCTION,
    DedupReport,
    PrepareReport,
    dedup,
    format_cot,
    normalize_question,
    prepare,
    solution_format,
    split_gsm8k_solution,
    split_trace,
    strip_calculator_notes,
    to_rl_example,
    to_sft_example,
)
from srlm.data.sources import load_records
from srlm.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HUB_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
COMPLETION = re.compile(r"<think>(.*)</think>\n<answer>(.*)</answer>", re.DOTALL)


def record(question: str, answer: str = "1", solution: str | None = None, meta: dict | None = None,
           id: str = "r") -> dict:
    return {"id": id, "source": "t", "question": question, "answer": answer, "solution": solution,
            "meta": meta or {}}


def answers_match(response_answer: str, gold: str) -> bool:
    """Grade with the project's grader when it is available, else by exact match."""
    try:
        from srlm.grading import grade
    except ImportError:
        return response_answer == gold
    return response_answer == gold or grade(f"<answer>{response_answer}</answer>", gold).correct


# ----- dedup -------------------------------------------------------------------------------------------


def test_normalize_question() -> None:
    assert normalize_question("  What IS\n 2+2?\t") == "what is 2+2?"


def test_dedup_counts_exact_and_normalised_and_keeps_first() -> None:
    records = [record("What is 2+2?", id="a"), record("What is 2+2?", id="b"), record("what is  2+2?", id="c"),
               record("What is 3+3?", id="d"), record("WHAT IS 3+3?\n", id="e"), record("What is 2+2?", id="f")]
    kept, report = dedup(records)
    assert [r["id"] for r in kept] == ["a", "d"]
    assert report == DedupReport(n_in=6, n_exact=2, n_normalized=2)
    assert report.n_duplicates == 4 and report.n_out == 2


def test_dedup_empty() -> None:
    assert dedup([]) == ([], DedupReport(0, 0, 0))


# ----- formatting --------------------------------------------------------------------------------------


def test_strip_calculator_notes() -> None:
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nTotal 48+24 = <<48+24=72>>72."
    assert strip_calculator_notes(text) == "Natalia sold 48/2 = 24 clips.\nTotal 48+24 = 72."
    assert strip_calculator_notes("a << b and c >> d") == "a << b and c >> d"  # not a note: no pairing


def test_format_cot_is_the_paper_format() -> None:
    assert format_cot("  step one\nstep two ", " 42 ") == "<think>step one\nstep two</think>\n<answer>42</answer>"


def test_tag_instruction_asks_for_the_format() -> None:
    assert "<think>" in TAG_INSTRUCTION and "</answer>" in TAG_INSTRUCTION
    assert "<think>reasoning</think>\n<answer>final answer</answer>" in TAG_INSTRUCTION


def test_split_gsm8k_solution() -> None:
    reasoning, answer = split_gsm8k_solution("He has 3*4=<<3*4=12>>12 pens.\nSo 1,200 more.\n#### 1,212")
    assert reasoning == "He has 3*4=12 pens.\nSo 1,200 more."
    assert answer == "1212"


@pytest.mark.parametrize("trace, reasoning, answer", [
    ("<think>\n3*4 = 12\n</think>\n\nTom has 12 pens.\n\n\\boxed{12}",
     "3*4 = 12\n\nTom has 12 pens.\n\n\\boxed{12}", "12"),
    ("3*4 = 12</think>The answer is \\boxed{12}.", "3*4 = 12\n\nThe answer is \\boxed{12}.", "12"),
    ("<think>it is \\boxed{5}</think>", "it is \\boxed{5}", "5"),
    ("no tags, so \\boxed{7}", "no tags, so \\boxed{7}", "7"),
    ("<think>no box</think>done", "no box\n\ndone", None),
])
def test_split_trace(trace: str, reasoning: str, answer: str | None) -> None:
    assert split_trace(trace) == (reasoning, answer)


def test_solution_format_declared_or_detected() -> None:
    assert solution_format(record("q", solution="x\n#### 1")) == "gsm8k"
    assert solution_format(record("q", solution="<think>a</think>\\boxed{1}")) == "trace"
    assert solution_format(record("q", solution="$\\boxed{1}$")) == "latex"
    assert solution_format(record("q", solution="x\n#### 1", meta={"solution_format": "latex"})) == "latex"
    with pytest.raises(UserError, match="unknown solution_format"):
        solution_format(record("q", solution="x", meta={"solution_format": "yaml"}))


# ----- examples ----------------------------------------------------------------------------------------


def test_to_sft_example_gsm8k() -> None:
    r = record("Q?", "1212", "He has 3*4=<<3*4=12>>12 pens.\n#### 1,212", {"solution_format": "gsm8k"}, id="g1")
    assert to_sft_example(r) == {"id": "g1", "prompt": "Q?",
                                 "completion": "<think>He has 3*4=12 pens.</think>\n<answer>1212</answer>"}


def test_to_sft_example_latex_and_trace() -> None:
    latex = record("Q?", "\\frac{1}{4}", "So $x=\\boxed{\\frac{1}{4}}$.", {"solution_format": "latex"})
    assert to_sft_example(latex)["completion"] == (
        "<think>So $x=\\boxed{\\frac{1}{4}}$.</think>\n<answer>\\frac{1}{4}</answer>")
    trace = record("Q?", "12", "<think>3*4</think>\nSo \\boxed{12}", {"solution_format": "trace"})
    assert to_sft_example(trace)["completion"] == "<think>3*4\n\nSo \\boxed{12}</think>\n<answer>12</answer>"
    unboxed = record("Q?", "12", "<think>3*4</think>", {"solution_format": "trace"})
    assert to_sft_example(unboxed)["completion"].endswith("<answer>12</answer>")  # falls back to the gold


def test_to_sft_example_needs_a_solution() -> None:
    with pytest.raises(UserError, match="record amc-1 has no reference solution"):
        to_sft_example(record("Q?", "3", None, id="amc-1"))


def test_to_rl_example() -> None:
    assert to_rl_example(record("Q?", "27", None, id="a")) == {"id": "a", "prompt": "Q?", "answer": "27"}


def test_prepare_counts_and_length_filter() -> None:
    records = [record("short?", "1", "x\n#### 1", id="a"), record("SHORT?", "1", "x\n#### 1", id="b"),
               record("long " * 50 + "?", "2", "y\n#### 2", id="c")]
    examples, report = prepare(records, for_="sft", max_chars=100)
    assert [e["id"] for e in examples] == ["a"]
    assert report == PrepareReport(n_in=3, n_duplicates=1, n_too_long=1, n_out=1)
    examples, report = prepare(records, for_="rl")
    assert [e["answer"] for e in examples] == ["1", "2"]
    assert report == PrepareReport(3, 1, 0, 2)
    with pytest.raises(UserError, match="unknown purpose"):
        prepare(records, for_="dpo")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="max_chars"):
        prepare(records, max_chars=0)


def test_prepare_does_not_mutate_records() -> None:
    records = [record("q?", "1", "a <<1+0=1>>1\n#### 1", id="a")]
    snapshot = [dict(r) for r in records]
    prepare(records, for_="sft")
    assert records == snapshot


def _check_sft_answers_equal_gold(records: list[dict]) -> None:
    examples, report = prepare(records, for_="sft")
    gold = {r["id"]: r["answer"] for r in records}
    assert report.n_out == len(examples) > 0
    for ex in examples:
        match = COMPLETION.fullmatch(ex["completion"])
        assert match, ex["completion"]
        reasoning, answer = match.groups()
        assert reasoning.strip() and "<<" not in reasoning and "####" not in reasoning
        assert answers_match(answer, gold[ex["id"]]), (ex["id"], answer, gold[ex["id"]])


def test_gsm8k_sft_answers_equal_gold_on_fixture(tmp_path: Path) -> None:
    _check_sft_answers_equal_gold(load_records("gsm8k", split="train", path=HUB_FIXTURES / "openai__gsm8k" / "main"))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data folder at {SHARED_DATA}")
def test_gsm8k_train_sft_answers_equal_gold() -> None:
    records = load_records("gsm8k", split="train", path=SHARED_DATA)
    assert len(records) == 7473
    _check_sft_answers_equal_gold(records)
