"""Distillation end to end on tiny models: logit-level KD (off- and on-policy, every divergence), the shared-
vocabulary check, and `srlm kd generate` (rejection sampling, resumable) feeding an SFT stage."""

import json

import pytest
import torch

from srlm.config import DatasetRef, LogitKDConfig, SFTConfig
from srlm.engines.base import Completion
from srlm.errors import UserError
from srlm.tiny import TinySpec, write_tiny_model
from srlm.files import read_metrics

pytestmark = pytest.mark.e2e

CPU = torch.device("cpu")
DATA = DatasetRef(name="synthetic", split="train", options={"n": 24})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    student = write_tiny_model(root / "student", TinySpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64))
    teacher = write_tiny_model(root / "teacher", TinySpec(hidden=48, layers=2, heads=2, kv_heads=1, intermediate=96,
                                                          seed=1))
    return student, teacher


def kd_cfg(teacher, **kw) -> LogitKDConfig:
    base = dict(teacher=str(teacher) if teacher else None, data=DATA, prompt="tags_brief", steps=3, batch_size=4, lr=3e-3,
                max_length=512, seed=0)
    return LogitKDConfig(**{**base, **kw})


def test_teacher_identical_to_student_gives_zero_divergence(tmp_path, models):
    from srlm.train.distill import run_distill

    student, _ = models
    run_distill(kd_cfg(student, steps=1), student, tmp_path / "self", CPU, progress=False)
    (m,) = read_metrics(tmp_path / "self" / "metrics.jsonl")
    assert abs(m["kd"]) < 1e-5 and abs(m["loss"]) < 1e-5 and m["grad_norm"] < 1e-4


@pytest.mark.parametrize("divergence,extra", [
    ("forward_kl", {"packing": True, "ce_weight": 0.2}),
    ("reverse_kl", {"on_policy": 1.0, "max_new_tokens": 12}),
    ("jsd", {"beta": 0.3, "on_policy": 0.5, "max_new_tokens": 12, "temperature": 2.0}),
])
def test_distillation_from_another_teacher_trains(tmp_path, models, divergence, extra):
    from srlm.train.distill import run_distill

    student, teacher = models
    summary = run_distill(kd_cfg(teacher, divergence=divergence, **extra), student, tmp_path / "kd", CPU, progress=False)
    steps = read_metrics(tmp_path / "kd" / "metrics.jsonl")
    assert len(steps) == 3 and summary["teacher"] == str(teacher)
    assert all(m["kd"] > 0 for m in steps)
    if extra.get("ce_weight"):
        assert all("ce" in m for m in steps)
    if extra.get("on_policy") == 1.0:
        assert all(m["on_policy"] == 1.0 and m["sample_tokens_mean"] <= 12 for m in steps)
    assert (tmp_path / "kd" / "checkpoint" / "model.safetensors").exists()


def test_teacher_with_another_vocabulary_is_refused_before_training(tmp_path, models):
    from transformers import AutoTokenizer

    from srlm.train.distill import run_distill

    student, teacher = models
    other = tmp_path / "other-teacher"
    write_tiny_model(other, TinySpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64))
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<step>"])
    tok.save_pretrained(other)
    with pytest.raises(UserError, match="tokenizers differ in size"):
        run_distill(kd_cfg(other), student, tmp_path / "kd", CPU, progress=False)
    assert not (tmp_path / "kd" / "metrics.jsonl").exists()
    with pytest.raises(UserError, match="set `teacher`"):
        run_distill(kd_cfg(None), student, tmp_path / "kd", CPU, progress=False)


# ----------------------------------------------------------------------------------------- trace generation


class FakeTeacher:
    """Stands in for HFEngine.generate: per problem one paper-format correct trace, one wrong one, one
    correct `\\boxed{}` write-up, and one cut off by the length limit."""

    def __init__(self, answers_by_prompt):
        self.answers = answers_by_prompt
        self.calls = 0

    def __call__(self, engine, prompts, sampling):
        self.calls += 1
        out = []
        for p in prompts:
            gold = self.answers[tuple(p)]
            texts = [(f"<think>working it out</think>\n<answer>{gold}</answer>", "stop"),
                     ("<think>guess</think>\n<answer>-1</answer>", "stop"),
                     (f"Adding up gives \\boxed{{{gold}}}.", "stop"),
                     (f"<think>long</think>\n<answer>{gold}</answer>", "length")]
            out.append([Completion([1, 2], t, r) for t, r in texts[:sampling.n]])
        return out


def test_distill_generate_rejection_samples_resumes_and_feeds_sft(tmp_path, models, monkeypatch, capsys):
    from srlm.cli import main
    from srlm.data.prompts import render_prompt
    from srlm.data.sources import load_records
    from srlm.engines.hf import HFEngine
    from srlm.models import load_tokenizer

    student, teacher = models
    tok = load_tokenizer(teacher)
    records = load_records("synthetic", split="test", limit=5, n=20)
    fake = FakeTeacher({tuple(tok.encode(render_prompt(tok, "tags", r["question"]), add_special_tokens=False)):
                        r["answer"] for r in records})
    monkeypatch.setattr(HFEngine, "generate", lambda self, prompts, sampling, seeds=None: fake(self, prompts, sampling))
    out = tmp_path / "traces.jsonl"
    args = ["kd", "generate", "--teacher", str(teacher), "--dataset", "synthetic", "--split", "test",
            "--samples", "4", "--out", str(out), "--quiet"]
    assert main([*args, "--limit", "3"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["sampled"], first["accepted"], first["reformatted"]) == (12, 6, 3)
    assert first["acceptance_rate"] == pytest.approx(0.5)

    # a re-run with more problems only samples the new ones; a half-written problem is dropped and redone
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines) + "\n" + json.dumps({"id": "x#0", "meta": {"problem_id": "x"}}) + "\n")
    assert main([*args, "--limit", "5"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["skipped_done"], second["sampled"], second["accepted"]) == (3, 8, 4)

    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    by_id = {r["id"]: r for r in records}
    for r in rows:
        gold = by_id[r["meta"]["problem_id"]]["answer"]
        assert r["answer"] == gold
        assert r["solution"] in (f"<think>working it out</think>\n<answer>{gold}</answer>",
                                 f"<think>Adding up gives \\boxed{{{gold}}}.</think>\n<answer>{gold}</answer>")

    from srlm.train.sft import run_sft

    cfg = SFTConfig(data=DatasetRef(name="records", path=str(out)), prompt="tags", steps=2, batch_size=4,
                    max_length=1024)
    summary = run_sft(cfg, student, tmp_path / "seq-kd", CPU, progress=False)
    assert summary["data"]["n_examples"] == 10
    assert len(read_metrics(tmp_path / "seq-kd" / "metrics.jsonl")) == 2


TRACES_SCRIPT = """
import sys
from srlm.cli import main
from srlm.data.prompts import render_prompt
from srlm.data.sources import load_records
from srlm.engines.base import Completion
from srlm.engines.hf import HFEngine
from srlm.models import load_tokenizer

tok = load_tokenizer(sys.argv[1])
gold = {tuple(tok.encode(render_prompt(tok, "tags", r["question"]), add_special_tokens=False)): r["answer"]
        for r in load_records("synthetic", split="test", limit=6, n=20)}

def teacher(self, prompts, sampling, seeds=None):  # sample j of a problem is right when its seed says so
    return [[Completion([1], f"<think>t{j}</think>\\n<answer>{gold[tuple(p)] if (s >> j) % 3 else -1}</answer>",
                        "stop") for j in range(sampling.n)] for p, s in zip(prompts, seeds)]

HFEngine.generate = teacher
sys.exit(main(sys.argv[2:]))
"""


def test_trace_generation_killed_mid_way_resumes_to_the_uninterrupted_traces(tmp_path, models):
    """A real SIGKILL (SRLM_FAULT) after the third problem: the re-run writes the same traces, in order."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "fake_teacher.py"
    script.write_text(TRACES_SCRIPT)
    teacher = models[1]

    def generate(out, fault=None):
        env = {k: v for k, v in os.environ.items() if k != "SRLM_FAULT"}
        env.update({"SRLM_FAULT": fault} if fault else {})
        return subprocess.run([sys.executable, str(script), str(teacher), "kd", "generate", "--teacher",
                               str(teacher), "--dataset", "synthetic", "--split", "test", "--limit", "6",
                               "--samples", "4", "--out", str(out), "--quiet"],
                              capture_output=True, text=True, env=env, timeout=300)

    assert generate(tmp_path / "whole.jsonl").returncode == 0
    killed = generate(tmp_path / "cut.jsonl", "traces:after_problem=3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len((tmp_path / "cut.jsonl.done").read_text().split()) == 3
    resumed = generate(tmp_path / "cut.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = (tmp_path / "whole.jsonl").read_text()
    assert whole and (tmp_path / "cut.jsonl").read_text() == whole
    assert (tmp_path / "cut.jsonl.done").read_text() == (tmp_path / "whole.jsonl.done").read_text()
