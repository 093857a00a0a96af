"""Load-time checks: every registry name and cross-field rule fails at load with the full key path and the
closest valid value (srlm/config_checks.py)."""

from __future__ import annotations

import pytest

from srlm.config import load_config
from srlm.errors import UserError

CASES = [
    (["grpo.aggregation=tok_mean"], "grpo.aggregation: unknown name 'tok_mean'; did you mean 'token_mean'?"),
    (["grpo.advantage=rlo"], "grpo.advantage: unknown name 'rlo'; did you mean 'rloo'?"),
    (["grpo.rewards=[format, acuracy]"], "grpo.rewards: unknown name 'acuracy'; did you mean 'accuracy'?"),
    (["sft.prompt=tagz"], "sft.prompt: unknown name 'tagz'; did you mean 'tags'?"),
    (["grpo.prompt=tags_brif"], "grpo.prompt: unknown name 'tags_brif'; did you mean 'tags_brief'?"),
    (["sft.data.name=gsm9k"], "sft.data.name: unknown dataset 'gsm9k'; did you mean 'gsm8k'?"),
    (["pretrain.data.split=tran"], "pretrain.data.split: unknown split 'tran' of synthetic; did you mean 'train'?"),
    (["pretrain.data.options={nn: 3}"], "pretrain.data.options.nn: unknown option 'nn' of synthetic; did you mean 'n'?"),
    (["eval.benchmarks=[{name: math50}]"], "eval.benchmarks.0.name: unknown dataset 'math50'; did you mean 'math500'?"),
    (["eval.benchmarks=[{name: gsm8k}, {name: gsm8k, split: train}]"],
     "eval.benchmarks: 'gsm8k' is listed 2 times (entries 0, 1)"),
    (["grpo.reward_weights=[1.0]"], "grpo.reward_weights: 1 weights for 2 rewards"),
    (["grpo.group_size=4", "grpo.minibatch_size=6"], "grpo.minibatch_size: 6 is not a multiple of group_size 4; try 8"),
    (["grpo.epsilon_high=0.1"], "grpo.epsilon_high: 0.1 is below epsilon 0.2"),
    (["pipelines={a: {stages: [{kind: sft, lora: {enabled: true, target_modules: [qproj]}}]}}"],
     "pipelines.a.stages.0.lora.target_modules: ['qproj'] match no module of the model; did you mean 'q_proj'?"),
    (["model.tiny.heads=3"], "model.tiny.heads: 3 heads do not divide hidden 128"),
    (["model.tiny.kv_heads=3"], "model.tiny.kv_heads: 3 key/value heads do not divide 4 heads"),
    (["model.tiny.hidden=12", "model.tiny.heads=4", "model.tiny.kv_heads=1"], "head size hidden/heads = 3 must be even"),
    (["sft.data.path=/no/such/folder"], "sft.data.path: path not found: /no/such/folder"),
    (["model.name_or_path=./no/such/model"], "model.name_or_path: './no/such/model' is not a folder"),
    (["pipelines={base: {stages: []}, a: {stages: [{kind: distill, teacher: bse}]}}"],
     "pipelines.a.stages.0.teacher: 'bse' is not a folder or file that exists, a hub id like 'org/name', or a "
     "pipeline of this config; did you mean 'base'?"),
    (["pipelines={a: {start: ./nowhere}}"], "pipelines.a.start: './nowhere' is not a folder"),
    (["run_dir="], "run_dir: empty"),
    (["pipelines={a: {stages: [{kind: distill}]}}"], "pipelines.a.stages.0.teacher: logit-level distillation needs"),
    (["data_path=/no/such/data"], "data_path: path not found"),
    (["pipelines={a: {stages: [{kind: grpo, aggregation: nope}]}}"], "pipelines.a.stages.0.aggregation: unknown name"),
]


@pytest.mark.parametrize("overrides, expected", CASES, ids=[c[0][-1][:40] for c in CASES])
def test_a_bad_name_or_rule_fails_at_load_with_key_and_closest_value(overrides, expected):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_section_problem_is_reported_once_not_per_stage():
    with pytest.raises(UserError) as err:
        load_config(None, ["grpo.aggregation=nope", "pipelines={a: {stages: [{kind: grpo}]}, b: {stages: [{kind: grpo}]}}"])
    assert str(err.value).count("unknown name 'nope'") == 1 and str(err.value).startswith("grpo.aggregation")


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as err:
        load_config(None, ["grpo.aggregation=nope", "sft.prompt=tagz"])
    assert "grpo.aggregation" in str(err.value) and "sft.prompt" in str(err.value)


def test_names_registered_later_are_accepted(monkeypatch):
    """Registry-driven: a reward or aggregation added to its registry is valid with no list to update."""
    from srlm.grading.rewards import REWARDS
    from srlm.train.losses import AGGREGATIONS

    monkeypatch.setitem(REWARDS, "length", lambda text, gold: 0.0)
    monkeypatch.setitem(AGGREGATIONS, "my_mean", AGGREGATIONS["token_mean"])
    cfg = load_config(None, ["grpo.rewards=[format, length]", "grpo.aggregation=my_mean"])
    assert cfg.grpo.rewards == ["format", "length"]


def test_the_shipped_configs_pass(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for path in [root / "demo.yaml", root / "rl_from_sft.yaml", *sorted((root / "paper").glob("*.yaml"))]:
        load_config(path)
