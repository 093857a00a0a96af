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
    assert json.loads((tmp_path / m["dir"] / "manifest.json").read_text())["status"] == "failed"
    assert not (tmp_path / m["dir"] / "checkpoint").exists()


def _evaluate(tiny, out, **kw):
    from srlm.config import EvalConfig
    from srlm.engines.hf import HFEngine
    from srlm.evaluate import evaluate
    from srlm.models import load_model

    model, tok = load_model(tiny, torch.device("cpu"))
    cfg = EvalConfig(benchmarks=[DatasetRef(name="synthetic", split="test", options={"n": 6})], prompt="tags_brief",
                     n=2, max_new_tokens=6, temperature=0.8, batch_size=4, **kw)
    return evaluate(HFEngine(model, tok, batch_size=4), tok, cfg, out, "tiny", progress=False)


def test_a_damaged_samples_line_is_skipped_once_and_its_problem_redone_without_duplicates(tiny, tmp_path, capsys):
    whole = _evaluate(tiny, tmp_path / "whole")
    path = tmp_path / "whole" / "synthetic" / "samples.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 12
    lines[4] = lines[4][: len(lines[4]) // 2]  # damaged in the middle of the file
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    again = _evaluate(tiny, tmp_path / "whole")
    err = capsys.readouterr().err
    assert err.count("damaged line skipped") == 1 and f"{path}:5:" in err
    good = [json.loads(x) for x in path.read_text().splitlines() if x != lines[4]]
    assert len(good) == 12 and len({(s["id"], s["sample"]) for s in good}) == 12  # redone once, not appended again
    strip = lambda s: {k: v for k, v in s.items() if "wall" not in k and k != "peak_memory_gb"}  # noqa: E731
    assert strip(again["benchmarks"]["synthetic"]) == strip(whole["benchmarks"]["synthetic"])


def test_re_running_a_finished_evaluation_keeps_its_total_time(tiny, tmp_path):
    first = _evaluate(tiny, tmp_path / "e")
    again = _evaluate(tiny, tmp_path / "e", )
    assert again["benchmarks"]["synthetic"]["wall_seconds"] >= first["benchmarks"]["synthetic"]["wall_seconds"] > 0
    assert again["wall_seconds"] >= first["wall_seconds"]


def test_trust_remote_code_is_read_and_warned_about(tiny, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from srlm import models

    seen = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda *a, **kw: seen.append(kw["trust_remote_code"]) or real(*a, **kw))
    models.load_tokenizer(tiny)
    models.allow_remote_code(True)
    try:
        models.load_tokenizer(tiny)
    finally:
        models.allow_remote_code(False)
    assert seen == [False, True] and "trust_remote_code is on" in capsys.readouterr().err


def test_a_corrupt_weights_file_is_one_line_naming_the_stage_folder_to_delete(tiny, tmp_path):
    import shutil

    from srlm.errors import UserError
    from srlm.models import load_model

    stage = tmp_path / "stages" / "sft-abc"
    shutil.copytree(tiny, stage / "checkpoint")
    (stage / "manifest.json").write_text("{}")
    for size in (1000, 0):  # truncated, empty
        with open(stage / "checkpoint" / "model.safetensors", "r+b") as f:
            f.truncate(size)
        with pytest.raises(UserError) as err:
            load_model(stage / "checkpoint", torch.device("cpu"))
        assert "weights file is damaged" in str(err.value) and f"delete the stage folder {stage}" in str(err.value)


def test_a_non_utf8_config_is_one_line(tmp_path):
    from srlm.errors import UserError

    path = tmp_path / "latin1.yaml"
    path.write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_config(path)
