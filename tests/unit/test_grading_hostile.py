"""Hostile responses: each gets a verdict without hanging, and leaves the grader healthy.

Tests do not assert timings (machines differ); the timeout marks only catch a hang.
`benchmarks/grading.py` measures how fast these are graded."""

import pytest

from srlm.grading import grade

HOSTILE = {
    "power tower": "\\boxed{10^{10^{10}}}",
    "power tower, bare": "10^{10^{10}}",
    "huge literal exponent": "\\boxed{1e999999999}",
    "100 KB of nested braces": "{" * 50_000 + "}" * 50_000,
    "nested braces in a box": "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",
    "unclosed nested braces": "\\boxed{" + "{" * 100_000,
    "1 MB response": "x" * 1_000_000,
    "1 MB of numbers": "1234 " * 200_000,
    "1 MB of open boxes": "\\boxed{" * 140_000,
    "1 MB of answer phrases": "the answer is " * 70_000,
    "1 MB of markers": "#### " * 200_000,
    "many think tags": "<think>" * 100_000,
    "lone surrogate": "\ud800",
    "surrogate in a box": "\ud800 \\boxed{\ud800}",
    "only an open box": "\\boxed{",
    "huge factorial": "\\boxed{1000000!}",
    "huge binomial": "\\boxed{\\binom{100000000}{50000000}}",
    "stacked powers": "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "deep parentheses": "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "deep fractions": "\\boxed{" + "\\frac{1}{" * 3000 + "2" + "}" * 3000 + "}",
    "long sum": "\\boxed{" + "+".join(["x"] * 3000) + "}",
    "many minus signs": "\\boxed{" + "-" * 5000 + "1}",
    "5000-digit number": "\\boxed{" + "9" * 5000 + "}",
    "factorial of a googol": "\\boxed{(10^{100})!}",
    # Inputs aimed at the rules of grader 2.x: boxes read together, committed last numbers, space-grouped
    # thousands, labelled values, matrix sums, number words.
    "1 MB of adjacent boxes": "\\boxed{1} and " * 70_000,
    "1 MB of empty boxes": "\\boxed{} " * 110_000,
    "1 MB of space-grouped digits": "1 " + "111 " * 250_000 + "1111",
    "1 MB of digits and points": "1 111." * 170_000,
    "1 MB of questions": "How many of the 15 books? " * 40_000,
    "1 MB of final answers naming variables": "Final Answer: The largest $n$ is " * 30_000,
    "long list of labelled values": "\\boxed{" + ", ".join(f"a_{{{k}}}={k}" for k in range(2000)) + "}",
    "long matrix sum": "\\boxed{" + "+".join(["\\begin{pmatrix}1\\\\2\\end{pmatrix}"] * 500) + "}",
    "long linear inequality": "\\boxed{" + "+".join(["x"] * 2000) + " < 1}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("gold", ["42", "10^{10^{10}}", "\\frac{1}{2}"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_response_never_hangs(name, gold):
    result = grade(HOSTILE[name], gold)
    assert isinstance(result.correct, bool)
    assert result.extracted is None or isinstance(result.extracted, str)
    result.extracted is None or result.extracted.encode("utf-8")  # always encodable


@pytest.mark.parametrize("name", ["100 KB of nested braces", "1 MB response", "lone surrogate", "power tower"])
@pytest.mark.timeout(60)
def test_hostile_gold_never_hangs(name):
    result = grade("\\boxed{42}", HOSTILE[name])
    assert result.correct is False


def test_grader_is_healthy_after_hostile_inputs():
    for response in HOSTILE.values():
        grade(response, "42")
    assert grade("\\boxed{\\frac{1}{2}}", "0.5").correct
    assert not grade("\\boxed{\\frac{1}{2}}", "2").correct
    assert grade("\\boxed{10^{10^{10}}}", "10^{10^{10}}").correct
