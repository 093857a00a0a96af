"""The synthetic task: deterministic, disjoint splits, and reference answers that are right."""

import re

import pytest

from srlm.data.synthetic import make_problem, make_split, split_of


def _evaluate_solution(solution: str) -> int:
    """Recompute every 'a op b = c' line of a solution and return the last result."""
    value = None
    for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", solution):
        a, b, c = int(a), int(b), int(c)
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        if op == "/":
            assert a % b == 0
        assert expected == c, solution
        if value is not None:
            assert a == value, f"step does not continue from the previous result: {solution}"
        value = c
    return value


def test_deterministic():
    assert make_split("train", 50, seed=3) == make_split("train", 50, seed=3)
    assert make_split("train", 50, seed=3) != make_split("train", 50, seed=4)
    assert make_problem(7, 11, 2) == make_problem(7, 11, 2)


def test_splits_are_disjoint():
    train = {r["question"] for r in make_split("train", 3000)}
    test = {r["question"] for r in make_split("test", 300)}
    val = {r["question"] for r in make_split("validation", 300)}
    assert not train & test and not train & val and not test & val
    assert len(test) == 300  # no duplicates inside a split


def test_every_reference_answer_is_the_computed_value():
    for rec in make_split("train", 500) + make_split("test", 200, seed=1, min_ops=2, max_ops=4):
        solution = rec["solution"]
        final = re.search(r"#### (-?\d+)$", solution)
        assert final, solution
        assert final.group(1) == rec["answer"]
        assert _evaluate_solution(solution) == int(rec["answer"])
        assert int(rec["answer"]) > 0


def test_difficulty_levels_and_canonical_schema():
    recs = make_split("test", 30, min_ops=2, max_ops=4)
    assert {r["meta"]["n_ops"] for r in recs} == {2, 3, 4}
    for r in recs:
        assert set(r) == {"id", "source", "question", "answer", "solution", "meta"}
        assert r["source"] == "synthetic"
        assert r["solution"].count("\n") == r["meta"]["n_ops"]  # one line per step, then ####
        assert split_of(r["question"]) == "test"


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        make_split("dev", 3)
    with pytest.raises(ValueError, match="min_ops"):
        make_split("train", 3, min_ops=3, max_ops=2)
