"""pass@k against the combinatorial formula, and the standard errors of accuracy."""

import math
from itertools import combinations

import pytest

from srlm.stats import accuracy_summary, mean_and_se, paired_difference, pass_at_k


def comb_pass_at_k(n: int, c: int, k: int) -> float:
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_hand_computed_cases():
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert pass_at_k(3, 2, 2) == 1.0  # fewer wrong samples than k: every k-subset has a right one


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_pass_at_k_matches_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(comb_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_correct_sample():
    samples = [True, False, False, True, False, False]
    n, c = len(samples), sum(samples)
    for k in range(1, n + 1):
        subsets = list(combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_and_standard_error():
    mean, se = mean_and_se([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5
    # sample std = sqrt(((0.5^2) * 4) / 3) = sqrt(1/3); se = that / sqrt(4)
    assert se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert mean_and_se([0.7]) == (0.7, 0.0)
    m, s = mean_and_se([])
    assert math.isnan(m) and math.isnan(s)
    assert mean_and_se([0.25, 0.25, 0.25]) == (0.25, 0.0)


def test_accuracy_summary_means_per_problem_and_se_over_problems():
    correct = [[True, True, False, False], [True, True, True, True], [False, False, False, False]]
    s = accuracy_summary(correct)
    assert s["n_problems"] == 3 and s["n_samples"] == 4
    per_problem = [0.5, 1.0, 0.0]
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["accuracy_se"] == pytest.approx(mean_and_se(per_problem)[1])
    assert s["accuracy_se"] == pytest.approx(math.sqrt(0.25 / 3))  # sample variance 0.25, 3 problems
    assert list(s["pass_at_k"]) == ["1", "2", "4"]
    assert s["pass_at_k"]["1"]["value"] == pytest.approx(0.5)
    # problem 1: n=4, c=2, k=2 -> 1 - C(2,2)/C(4,2) = 5/6; problem 2: 1; problem 3: 0
    assert s["pass_at_k"]["2"]["value"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert s["pass_at_k"]["2"]["se"] == pytest.approx(mean_and_se([5 / 6, 1.0, 0.0])[1])
    assert s["pass_at_k"]["4"]["value"] == pytest.approx(2 / 3)


def test_accuracy_summary_of_nothing_is_nan_not_zero():
    s = accuracy_summary([])
    assert s["n_problems"] == 0 and math.isnan(s["accuracy"])


def test_paired_difference_hand_computed():
    # differences over the common problems p1..p3: 0.5, 0.0, 1.0 -> mean 0.5, sd 0.5, se 0.5 / sqrt(3)
    a = {"p1": 1.0, "p2": 0.5, "p3": 1.0, "only_a": 1.0}
    b = {"p1": 0.5, "p2": 0.5, "p3": 0.0, "only_b": 0.0}
    d = paired_difference(a, b)
    assert d["n_problems"] == 3
    assert d["difference"] == pytest.approx(0.5)
    assert d["se"] == pytest.approx(0.5 / math.sqrt(3))


def test_paired_difference_cancels_problem_difficulty():
    # b is a uniformly 0.1 better than a on problems of very different difficulty: the unpaired error bars
    # overlap, the paired one is zero
    a = {f"p{i}": i / 10 for i in range(10)}
    b = {p: v + 0.1 for p, v in a.items()}
    d = paired_difference(b, a)
    assert d["difference"] == pytest.approx(0.1) and d["se"] == pytest.approx(0.0, abs=1e-12)
    assert mean_and_se(list(a.values()))[1] > 0.05
