"""The GRPO collapse guard: which metric histories stop a stage, and which do not."""

from __future__ import annotations

import math

import pytest

from srlm.config import CollapseGuardConfig
from srlm.engines.base import Completion
from srlm.train.grpo import CollapseGuard, rollout_entropy
from srlm.train.distributed import Dist

HEALTHY = [(0.5, 0.9, 0.30, 1.0)] * 6  # (loss, format rate, entropy, reward) per step

CASES = [
    ("healthy", HEALTHY, None),
    ("nan loss", HEALTHY[:2] + [(math.nan, 0.9, 0.3, 1.0)], "non-finite"),
    ("format falls", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(0.5, 0.0, 0.3, -1.0)] * 3, "format rate fell"),
    ("entropy explodes", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(0.5, 0.9, 4.0, 1.0)] * 3, "entropy rose"),
    ("frozen on a bad answer", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(0.5, 0.9, 0.001, 0.2)] * 3, "entropy fell"),
    # a sharp policy that still earns its reward has converged, it has not collapsed
    ("sharp and right", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(0.5, 0.9, 0.001, 1.1)] * 3, None),
    ("reward dips, entropy fine", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(0.5, 0.9, 0.3, 0.2)] * 3, None),
    # skipped updates (no loss): identical samples in every group count as zero entropy ...
    ("frozen, updates skipped", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(None, 0.9, 0.0, 0.2)] * 3, "entropy fell"),
    # ... varied samples leave the entropy unknown: the known window decides, the format rule still works
    ("skipped, entropy unknown", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(None, 0.9, None, 0.2)] * 3, None),
    ("skipped, format falls", [(0.5, 0.9, 0.3, 1.0)] * 3 + [(None, 0.0, None, -1.0)] * 3, "format rate fell"),
]


@pytest.mark.parametrize("name,history,expect", CASES, ids=[c[0] for c in CASES])
def test_collapse_guard(name, history, expect):
    guard = CollapseGuard(CollapseGuardConfig(window=2))
    reasons = [guard.check(*step) for step in history]
    fired = next((r for r in reasons if r), None)
    if expect is None:
        assert fired is None, fired
    else:
        assert fired and expect in fired


def test_disabled_guard_still_stops_on_non_finite_loss():
    guard = CollapseGuard(CollapseGuardConfig(enabled=False, window=1))
    assert guard.check(0.5, 0.0, 9.0, -2.0) is None
    assert "non-finite" in guard.check(math.inf, 0.9, 0.3, 1.0)


def _group(*seqs):
    return [Completion(token_ids=list(t), text="", finish_reason="length") for t in seqs]


def test_rollout_entropy_is_zero_only_when_every_group_repeats_one_sequence():
    one = Dist()  # a single process
    assert rollout_entropy([_group((1, 2), (1, 2)), _group((3,), (3,))], one) == 0.0
    assert rollout_entropy([_group((1, 2), (1, 2)), _group((3,), (4,))], one) is None
    assert rollout_entropy([_group((1, 2), (1, 3))], one) is None
