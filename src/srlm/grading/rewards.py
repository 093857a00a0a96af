"""Reward functions for RL, by name, so a config can select and weight them.

Each reward is ``fn(response: str, gold: str) -> float``. ``REWARDS`` maps names to functions;
``combine_rewards`` builds a weighted sum; ``get_reward`` resolves a name with a clear error.
"""

from __future__ import annotations

from typing import Callable

from srlm.errors import UserError
from srlm.grading.grade import format_ok, grade

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
    parts = [(get_reward(n), float(w)) for n, w in zip(names, weights)]

    def combined(response: str, gold: str) -> float:
        return sum(w * fn(response, gold) for fn, w in parts)

    combined.__name__ = "+".join(f"{w:g}*{n}" for n, w in zip(names, weights))
    return combined
