"""`eval.dtype`: the evaluated model's weights dtype, apart from training's `model.dtype`, and part of the
evaluation protocol once set (bf16 samples are not fp32 samples)."""

from srlm.config import load_config
from srlm.evaluate import settings_stamp
from srlm.pipeline import eval_engine_options


def test_evaluation_runs_in_eval_dtype_when_set_else_in_the_models():
    cfg = load_config(None, ["model.dtype=float32"])
    assert eval_engine_options(cfg, "m", _cpu()).dtype == "float32"
    cfg = load_config(None, ["model.dtype=float32", "eval.dtype=bfloat16"])
    assert eval_engine_options(cfg, "m", _cpu()).dtype == "bfloat16"


def test_eval_dtype_enters_the_protocol_stamp_only_when_set():
    unset = load_config(None, []).eval
    assert "dtype" not in settings_stamp(unset, "m", "hf")["protocol"]  # folders from before the field resume
    bf16 = load_config(None, ["eval.dtype=bfloat16"]).eval
    assert settings_stamp(bf16, "m", "hf")["protocol"]["dtype"] == "bfloat16"


def _cpu():
    import torch

    return torch.device("cpu")
