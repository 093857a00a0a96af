"""Rewards, the `grade` entry point, and the purity of `srlm.grading`."""

import dataclasses
import subprocess
import sys

import pytest

from srlm.errors import UserError
from srlm.grading import REWARDS, Grade, combine_rewards, format_ok, get_reward, grade
from srlm.grading.equivalence import parse_gold

GOOD = "<think>6 times 7</think>\n<answer>42</answer>"


@pytest.mark.parametrize("response,expected", [
    (GOOD, True),
    ("  <think>a</think><answer>42</answer>\n", True),
    ("<think></think><answer>42</answer>", True),
    ("<think>a</think> trailing <answer>42</answer>", False),
    ("<think>a</think><answer>42</answer> extra", False),
    ("<answer>42</answer>", False),
    ("<think>a</think>", False),
    ("<think>a</think><answer>4</answer><answer>2</answer>", False),
    ("<think>a<think>b</think><answer>42</answer>", False),
    ("<answer>42</answer><think>a</think>", False),
    ("\\boxed{42}", False),
])
def test_format(response, expected):
    assert format_ok(response) is expected
    assert REWARDS["format"](response, "42") == (1.0 if expected else -1.0)


def test_accuracy_and_correct_rewards():
    assert REWARDS["accuracy"](GOOD, "42") == 1.0
    assert REWARDS["accuracy"](GOOD, "41") == -1.0
    assert REWARDS["correct"](GOOD, "42") == 1.0
    assert REWARDS["correct"](GOOD, "41") == 0.0


def test_combined_rewards():
    both = combine_rewards(["format", "accuracy"])
    assert both(GOOD, "42") == 2.0
    assert both("\\boxed{42}", "42") == 0.0
    weighted = combine_rewards(["format", "correct"], [0.5, 2.0])
    assert weighted(GOOD, "42") == 2.5
    assert weighted("<answer>41</answer>", "42") == -0.5


def test_reward_names_are_checked():
    with pytest.raises(UserError, match="unknown reward"):
        get_reward("accurracy")
    with pytest.raises(UserError, match="weights"):
        combine_rewards(["format"], [1.0, 2.0])
    with pytest.raises(UserError):
        combine_rewards([])


def test_grade_is_a_frozen_dataclass():
    result = grade(GOOD, "42")
    assert result == Grade(correct=True, extracted="42", method="answer_tag", format_ok=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.correct = False


def test_gold_is_parsed_once():
    parse_gold.cache_clear()
    for _ in range(5):
        grade("\\boxed{3}", "\\frac{6}{2}")
    assert parse_gold.cache_info().misses == 1
    assert grade("\\boxed{3}", parse_gold("\\frac{6}{2}")).correct


def test_benchmark_controls_rounding_tolerance():
    from srlm.data.sources import exact_answers

    assert grade("\\boxed{1.574}", "1.57").correct
    assert grade("\\boxed{1.574}", "1.57", exact_answers("minerva_math")).correct
    assert not grade("\\boxed{1.574}", "1.57", exact_answers("math500")).correct
    assert not grade("\\boxed{1.574}", "1.57", exact_answers("gsm8k")).correct


def test_importing_grading_does_not_import_torch():
    code = "import sys, srlm.grading; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_ordinary_grading_never_loads_sympy():
    code = ("import sys\n"
            "from srlm.grading import grade\n"
            "assert grade('\\\\boxed{\\\\frac{x^2-1}{x-1}}', 'x+1').correct\n"
            "assert grade('#### 1,080', '1080').correct\n"
            "assert 'sympy' not in sys.modules, 'sympy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_score_grades_once_and_gives_each_rewards_own_values(monkeypatch):
    """`score` grades each response once and reads the grader's rewards off that grade: the same values as
    calling each reward on the response; a reward that is not the grader's is called as it is."""
    from srlm.grading import rewards as rewards_module

    responses = [GOOD, "<think>x</think><answer>41</answer>", "The answer is \\boxed{42}.", "no answer", ""]
    golds = ["42", "42", "42", "42", "7"]
    calls = []
    real_grade = rewards_module.grade
    monkeypatch.setattr(rewards_module, "grade", lambda r, g: calls.append(r) or real_grade(r, g))
    monkeypatch.setitem(REWARDS, "length", lambda r, g: len(r) / 10.0)
    names = ["format", "accuracy", "correct", "length"]
    values, grades = rewards_module.score(names, responses, golds)
    assert calls == responses  # one grade per response
    assert grades == [real_grade(r, g) for r, g in zip(responses, golds)]
    for name in names:
        assert values[name] == [REWARDS[name](r, g) for r, g in zip(responses, golds)]
    assert values["accuracy"][:3] == [1.0, -1.0, 1.0] and values["format"][:3] == [1.0, 1.0, -1.0]
    weights = [0.3, 1.7, 0.1, 0.7]
    combined = combine_rewards(names, weights)
    assert [rewards_module.weighted_sum([values[n][i] for n in names], weights) for i in range(len(responses))] \
        == [combined(r, g) for r, g in zip(responses, golds)]
