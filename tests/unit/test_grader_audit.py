"""The grader audit (math-verify's verdict beside srlm's), accuracy by extraction method, and the format
rate reported only where the prompt asks for the format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srlm.grading.audit import accuracy_by_method, disagreements, grader_audit
from srlm.grading.symbolic import math_verify_equal, shutdown_worker

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def sample(i, correct, method="boxed", second=None, audited=True):
    s = {"id": f"p{i}", "sample": 0, "gold": "3", "extracted": "3" if correct else "4", "method": method,
         "correct": correct, "response": "x" * 1000 + "END"}
    if audited:
        s["math_verify"] = second
    return s


def test_accuracy_by_method_hand_computed():
    samples = [sample(0, True), sample(1, False), sample(2, True, "last_number"), sample(3, False, "none"),
               sample(4, True, "answer_tag")]
    assert accuracy_by_method(samples) == {
        "answer_tag": {"n": 1, "share": 0.2, "accuracy": 1.0},
        "boxed": {"n": 2, "share": 0.4, "accuracy": 0.5},
        "last_number": {"n": 1, "share": 0.2, "accuracy": 1.0},
        "none": {"n": 1, "share": 0.2, "accuracy": 0.0},
    }
    assert accuracy_by_method([]) == {}


def test_grader_audit_hand_computed():
    samples = [sample(0, True, second=True), sample(1, True, second=False), sample(2, False, second=True),
               sample(3, False, second=False), sample(4, True, second=None), sample(5, False, audited=False)]
    audit = grader_audit(samples)
    assert audit == {"second_grader": "math-verify", "n_samples": 5, "n_judged": 4, "n_undecided": 1,
                     "srlm_accuracy": 0.5, "math_verify_accuracy": 0.5, "agreement": 0.5,
                     "srlm_only_correct": 1, "math_verify_only_correct": 1}
    assert grader_audit([sample(0, True, audited=False)]) is None
    lines = disagreements(samples)
    assert [(d["id"], d["srlm"], d["math_verify"]) for d in lines] == [("p1", True, False), ("p2", False, True)]
    assert lines[0]["response_tail"].endswith("END") and len(lines[0]["response_tail"]) == 600


@pytest.fixture(scope="module")
def worker():
    yield
    shutdown_worker()


@pytest.mark.timeout(600)  # a hang guard, not a timing: the first call starts the worker
@pytest.mark.parametrize("response,gold,expected", [
    ("So the answer is $\\boxed{\\frac{1}{2}}$.", "0.5", True),
    ("So the answer is $\\boxed{3}$.", "4", False),
    ("<think>2+2</think><answer>4</answer>", "4", True),  # tags read as line breaks
    ("$\\boxed{10^{10^{10^{10}}}}$", "1", False),  # math-verify's own limit answers, within the worker's
])
def test_math_verify_verdict_in_the_worker(worker, response, gold, expected):
    assert math_verify_equal(gold, response) is expected


class _Tokenizer:
    chat_template = None
    eos_token, eos_token_id = "</s>", 0

    def encode(self, text, add_special_tokens=False):
        return [1] * max(1, len(text.split()))


class _Canned:
    """An engine that answers problem k of each call with RESPONSES[k]."""

    name = "canned"

    def __init__(self, responses):
        self.responses = responses

    def generate(self, prompts, sampling, seeds, on_complete):
        from srlm.engines.base import Completion

        for k in range(len(prompts)):
            on_complete(k, [Completion(token_ids=[1, 2], text=self.responses[k], finish_reason="stop")
                            for _ in range(sampling.n)])


@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason=f"no GSM8K data at {DATA}")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("prompt,audit", [("tags", True), ("boxed", False)])
def test_evaluation_records_the_audit(worker, tmp_path, prompt, audit):
    from srlm.config import DatasetRef, EvalConfig
    from srlm.evaluate import evaluate

    # GSM8K test golds 18, 3, 70000: right in tags; right, but only as a restated number (srlm says no,
    # math-verify's last number says yes); right by the last-number fallback.
    responses = ["<think>16-3-4=9, 9*2=18</think><answer>18</answer>",
                 "So he needs 4 bolts to remove the 3 bolts.",
                 "The profit is 70000"]
    cfg = EvalConfig(benchmarks=[DatasetRef(name="gsm8k", path=str(DATA), limit=3)], prompt=prompt,
                     n=1, grader_audit=audit)
    summary = evaluate(_Canned(responses), _Tokenizer(), cfg, tmp_path, "canned")["benchmarks"]["gsm8k"]
    samples = [json.loads(x) for x in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert [s["correct"] for s in samples] == [True, False, True]
    assert summary["accuracy_by_method"] == {
        "answer_tag": {"n": 1, "share": 1 / 3, "accuracy": 1.0},
        "last_number": {"n": 1, "share": 1 / 3, "accuracy": 1.0},
        "none": {"n": 1, "share": 1 / 3, "accuracy": 0.0}}
    disagreements_file = tmp_path / "gsm8k" / "grader_disagreements.jsonl"
    if audit:
        assert [s["math_verify"] for s in samples] == [True, True, True]
        a = summary["grader_audit"]
        assert (a["srlm_accuracy"], a["math_verify_accuracy"], a["agreement"]) == (2 / 3, 1.0, 2 / 3)
        lines = [json.loads(x) for x in disagreements_file.read_text().splitlines()]
        assert [(d["id"], d["srlm"], d["math_verify"]) for d in lines] == [(samples[1]["id"], False, True)]
        assert summary["format_rate"] == 1 / 3  # the tags prompt asks for the format
    else:
        assert all("math_verify" not in s for s in samples) and summary["grader_audit"] is None
        assert not disagreements_file.exists()
        assert summary["format_rate"] is None  # the boxed prompt never asked for it: n/a
    # Evaluated afresh into the same folder with the audit the other way round: no stale file is left.
    cfg = cfg.model_copy(update={"grader_audit": not audit})
    again = evaluate(_Canned(responses), _Tokenizer(), cfg, tmp_path, "canned", overwrite=True)["benchmarks"]["gsm8k"]
    assert (again["grader_audit"] is None) == audit
    assert disagreements_file.exists() != audit


def test_report_shows_grader_agreement_and_na_format():
    from srlm.report_tables import Row, format_table, grader_agreement_table, report_markdown

    audit = {"n_judged": 4, "srlm_accuracy": 0.5, "math_verify_accuracy": 0.75, "agreement": 0.75}
    rows = [Row("base", "done", {"gsm8k": {"accuracy": 0.5, "accuracy_se": 0.1, "format_rate": None,
                                           "extraction_rate": 1.0, "grader_audit": audit}}),
            Row("old run", "done", {"gsm8k": {"accuracy": 0.1, "format_rate": 0.5, "extraction_rate": 0.5}})]
    assert grader_agreement_table(rows) == [["method", "gsm8k srlm / math-verify / agree"],
                                            ["base", "50 / 75 / 75"], ["old run", "–"]]
    assert [r[:2] for r in format_table(rows)[1:]] == [["base", "n/a / 100"], ["old run", "50 / 50"]]
    assert "## Grader agreement (%)" in report_markdown("t", rows)
    assert grader_agreement_table(rows[1:]) is None


def test_audits_of_several_seeds_are_pooled():
    from srlm.grading.audit import merge_audits
    from srlm.report_folder import combine_seeds

    a = grader_audit([sample(0, True, second=True), sample(1, True, second=False)])  # 1 of 2 agree
    b = grader_audit([sample(0, False, second=False), sample(1, True, second=True), sample(2, False, second=None),
                      sample(3, True, second=True), sample(4, False, second=False)])  # 4 of 4 agree
    merged = merge_audits([a, None, b])
    assert (merged["n_samples"], merged["n_judged"], merged["n_undecided"]) == (7, 6, 1)
    assert merged["agreement"] == 5 / 6 and merged["srlm_accuracy"] == 4 / 6 and merged["math_verify_accuracy"] == 3 / 6
    assert (merged["srlm_only_correct"], merged["math_verify_only_correct"]) == (1, 0)
    assert merge_audits([None, None]) is None
    by_seed = {0: {"accuracy": 0.5, "grader_audit": a}, 1: {"accuracy": 0.5, "grader_audit": b}}
    assert combine_seeds(by_seed, {0: {"p0": 1.0}, 1: {"p0": 0.0}})["grader_audit"] == merged
