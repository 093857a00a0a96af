"""Accuracy statistics: unbiased pass@k and standard errors over problems (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a running product, which never forms huge binomials (Chen et al., 2021).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); se is 0 for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def accuracy_summary(correct_by_problem: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict:
    """Accuracy (mean pass@1 over all samples, averaged per problem) with its standard error over
    problems, and pass@k for each k <= n (all problems must have the same number of samples n)."""
    if not correct_by_problem:
        return {"n_problems": 0, "accuracy": float("nan"), "accuracy_se": float("nan"), "pass_at_k": {}}
    n = min(len(x) for x in correct_by_problem)
    per_problem = [sum(x[:n]) / n for x in correct_by_problem]
    acc, se = mean_and_se(per_problem)
    ks = ks if ks is not None else [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
    pk = {}
    for k in ks:
        vals = [pass_at_k(n, sum(x[:n]), k) for x in correct_by_problem]
        m, s = mean_and_se(vals)
        pk[str(k)] = {"value": m, "se": s}
    return {"n_problems": len(correct_by_problem), "n_samples": n, "accuracy": acc, "accuracy_se": se,
            "pass_at_k": pk}


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict:
    """Mean of a[p] - b[p] over the problems p both cover, with its standard error over those problems.

    For two checkpoints scored on the same problems, pairing removes the spread of problem difficulty
    from the error bar, so a real gain shows as significant with far fewer problems than comparing the
    two accuracies' separate error bars would need.
    """
    common = [p for p in a if p in b]
    diff, se = mean_and_se([a[p] - b[p] for p in common])
    return {"n_problems": len(common), "difference": diff, "se": se}
