"""No silent wrong results: a half-written start model is rebuilt, a non-finite loss fails its stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srlm.config import DatasetRef, PretrainConfig, load_config
from srlm.pipeline import run_stage, start_model
from srlm.tiny import TinySpec, write_tiny_model

pytestmark = pytest.mark.e2e

SPEC = TinySpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)
TINY = {"model.tiny.hidden": 32, "model.tiny.layers": 1, "model.tiny.heads": 2, "model.tiny.kv_heads": 1,
        "model.tiny.intermediate": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m", SPEC)


def test_a_half_written_start_model_is_detected_and_rebuilt(tmp_path):
    cfg = load_config(None, [f"{k}={v}" for k, v in TINY.items()])
    folder = tmp_path / "start-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["Qwen2ForCa')  # what a kill left (before atomic writes)
    path, key = start_model(cfg, tmp_path, "any")
    assert path == folder and json.loads((folder / "config.json").read_text())["hidden_size"] == 32
    from srlm.models import load_model

    load_model(folder, torch.device("cpu"))  # whole again
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert start_model(cfg, tmp_path, "any") == (path, key)
    assert (folder / "model.safetensors").stat().st_mtime_ns == before  # a whole one is kept


@pytest.mark.parametrize("lr", [float("inf"), 1e30])
def test_a_non_finite_loss_fails_the_stage_naming_the_step(tiny, tmp_path, lr):
    cfg = PretrainConfig(data=DatasetRef(name="synthetic", split="train", options={"n": 16}), steps=4,
                         batch_size=4, lr=lr, warmup_ratio=0.0)
    m = run_stage("pretrain", cfg, tiny, "tiny", tmp_path, torch.device("cpu"), progress=False)
    assert m["status"] == "failed", m
    assert m["reason"].startswith(("loss is NaN at step", "loss is inf at step", "gradient norm is")), m["reason"]
    saved = json.loads(Path(tmp_path, m["dir"], "manifest.json").read_text()) if not Path(m["dir"]).is_absolute() \
        else json.loads(Path(m["dir"], "manifest.json").read_text())
    assert saved["status"] == "failed"
    assert not (Path(m["dir"]) / "checkpoint").exists() and not (tmp_path / m["dir"] / "checkpoint").exists()
