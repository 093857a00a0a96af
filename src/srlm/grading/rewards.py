"""Reward functions for RL, by name, so a config can select and weight them.

Each reward is ``fn(response: str, gold: str) -> float``. ``REWARDS`` maps names to functions;
``combine_rewards`` builds a weighted sum (``weighted_sum``, the one reward sum); ``get_reward`` resolves a
name with a clear error; ``score`` grades each response once and derives the named rewards from it.
"""

from __future__ import annotations

from typing import Callable

from srlm.errors import UserError
from srlm.grading.grade import Grade, format_ok, grade

RewardFn = Callable[[str, str], float]


def format_reward(response: str, gold: str) -> float:
    """The paper's format reward: +1 for ``<think>…</think><answer>…</answer>``, −1 otherwise."""
    return 1.0 if format_ok(response) else -1.0


def accuracy_reward(response: str, gold: str) -> float:
    """The paper's accuracy reward: +1 when the final answer equals the gold, −1 otherwise."""
    return 1.0 if grade(response, gold).correct else -1.0


def correct_reward(response: str, gold: str) -> float:
    """1 when the final answer equals the gold, else 0 (the 0/1 variant)."""
    return 1.0 if grade(response, gold).correct else 0.0


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "correct": correct_reward,
}


# The grader's rewards as functions of a response's Grade, so that `score` grades each response once
# (keyed by function: a name re-registered to another function is called as it is).
_FROM_GRADE: dict[RewardFn, Callable[[Grade], float]] = {
    format_reward: lambda g: 1.0 if g.format_ok else -1.0,
    accuracy_reward: lambda g: 1.0 if g.correct else -1.0,
    correct_reward: lambda g: 1.0 if g.correct else 0.0,
}


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``."""
    try:
        return REWARDS[name]
    except KeyError:
        raise UserError(f"unknown reward {name!r}; choose from {', '.join(sorted(REWARDS))}") from None


def combine_rewards(names: list[str], weights: list[float] | None = None) -> RewardFn:
    """A reward equal to ``sum(weight * reward(response, gold))`` over the named rewards.

    Weights default to 1 each. Names are checked now, so a config typo fails at start-up.
    """
    if not names:
        raise UserError("combine_rewards needs at least one reward name")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise UserError(f"{len(names)} reward names but {len(weights)} weights")
    fns, floats = [get_reward(n) for n in names], [float(w) for w in weights]

    def combined(response: str, gold: str) -> float:
        return weighted_sum([fn(response, gold) for fn in fns], floats)

    combined.__name__ = "+".join(f"{w:g}*{n}" for n, w in zip(names, weights))
    return combined


def weighted_sum(values: list, weights: list[float]):
    """``sum(weight * value)`` in the order given; values are floats or tensors alike (the one reward sum)."""
    return sum(w * v for v, w in zip(values, weights))


def score(names: list[str], responses: list[str], golds: list[str]) -> tuple[dict[str, list[float]], list[Grade]]:
    """Each response graded once; returns (name -> each response's reward, the grades). The grader's rewards
    are read off the grade; any other reward is called on the response."""
    grades = [grade(r, g) for r, g in zip(responses, golds)]
    values = {}
    for name in names:
        fn = get_reward(name)
        from_grade = _FROM_GRADE.get(fn)
        values[name] = ([from_grade(gr) for gr in grades] if from_grade else
                        [fn(r, g) for r, g in zip(responses, golds)])
    return values, grades
