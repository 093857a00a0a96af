"""SRLM_COMPILE / SRLM_FSDP are stage config fields (`compile`, `fsdp`): the environment variables turn them on
at load time, so the run's config.yaml records what ran; they stay out of stage keys (how, not what)."""

import pytest

from srlm.config import SFTConfig, load_config, pipeline_stages
from srlm.errors import UserError
from srlm.pipeline import EXECUTION_FIELDS, content_key, stage_key
from srlm.train.optim import compile_requested

SWITCHED = ("pretrain", "sft", "kd", "distill")


@pytest.fixture(autouse=True)
def no_switches(monkeypatch):
    for var in ("SRLM_COMPILE", "SRLM_FSDP", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(var, raising=False)


def test_a_stage_key_is_what_it_was_before_the_fields_existed():
    cfg = SFTConfig(lr=3e-4, steps=7)
    # the key as run_stage computed it before `compile` and `fsdp` were fields: the same dump without them
    # (and without `bf16_autocast`, which is keyed only when set)
    before = {k: v for k, v in cfg.model_dump().items()
              if k not in ("compile", "fsdp", "micro_batch_tokens", "bf16_autocast")}
    assert stage_key("sft", cfg, "tiny:abc") == content_key({"kind": "sft", "config": before, "input": "tiny:abc"})
    on = cfg.model_copy(update={"compile": True, "fsdp": True})
    assert stage_key("sft", on, "tiny:abc") == stage_key("sft", cfg, "tiny:abc")
    assert stage_key("sft", cfg.model_copy(update={"lr": 1e-4}), "tiny:abc") != stage_key("sft", cfg, "tiny:abc")
    assert set(EXECUTION_FIELDS) == {"compile", "fsdp", "micro_batch_tokens"}


@pytest.mark.parametrize("var, value, field", [("SRLM_COMPILE", "1", "compile"), ("SRLM_FSDP", "1", "fsdp"),
                                               ("ACCELERATE_USE_FSDP", "true", "fsdp")])
def test_an_environment_switch_sets_its_field_in_every_supervised_stage(monkeypatch, var, value, field):
    overrides = ["pipelines.p.stages=[{kind: sft, compile: false, fsdp: false}, {kind: grpo}]"]
    assert not any(getattr(getattr(load_config(None, overrides), k), field) for k in SWITCHED)
    monkeypatch.setenv(var, value)
    cfg = load_config(None, overrides)
    assert all(getattr(getattr(cfg, k), field) for k in SWITCHED) and not getattr(cfg.grpo, field)
    (_, sft), (_, grpo) = pipeline_stages(cfg, "p")
    assert getattr(sft, field) and not getattr(grpo, field)  # the variable overrides the stage's own value
    assert compile_requested(sft) == (field == "compile")  # the field is what the trainer reads


def test_the_variables_off_leave_the_fields_as_configured(monkeypatch):
    monkeypatch.setenv("SRLM_COMPILE", "0")
    cfg = load_config(None, ["sft.compile=true"])
    assert cfg.sft.compile and not cfg.pretrain.compile and compile_requested(cfg.sft)


def test_grpo_refuses_compile_and_fsdp_at_load():
    with pytest.raises(UserError, match=r"grpo\.fsdp: GRPO stages do not support it"):
        load_config(None, ["grpo.fsdp=true"])


def test_micro_batch_tokens_stays_out_of_stage_keys():
    """Added after runs existed, a memory knob (same gradients up to rounding): keys are what they were."""
    cfg = SFTConfig(lr=3e-4, steps=7)
    before = {k: v for k, v in cfg.model_dump().items()
              if k not in ("compile", "fsdp", "micro_batch_tokens", "bf16_autocast")}
    assert stage_key("sft", cfg, "tiny:abc") == content_key({"kind": "sft", "config": before, "input": "tiny:abc"})
    assert stage_key("sft", cfg.model_copy(update={"micro_batch_tokens": 512}), "tiny:abc") == \
        stage_key("sft", cfg, "tiny:abc")
