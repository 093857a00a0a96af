"""Kill `srlm run` hard (SIGKILL, through SRLM_FAULT) at every kind of point, one after the other on the
same run folder, re-running the same command each time: the run ends identical to an uninterrupted one.

The kills land where SRLM_FAULT says, not where a timer happens to catch the process, so the test is the
same on a fast machine and a loaded one. The config has every stage kind (pretrain, SFT full and LoRA,
sequence-level KD, logit-level distillation, GRPO with mu = 1 and 2), evaluation, the start model and the
report, each a few steps of a tiny model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srlm.cli import main
from srlm.faults import parse

pytestmark = pytest.mark.e2e

CONFIG = """
device: cpu
model:
  name_or_path: tiny
  tiny: {hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64}
pretrain: {data: {name: synthetic, split: train, options: {n: 64}}, steps: 4, batch_size: 8, save_every: 2}
sft: {data: {name: synthetic, split: train, options: {n: 32}}, prompt: tags_brief, steps: 4, batch_size: 8,
      lr: 1.0e-3, save_every: 2}
kd: {teacher: null, data: {name: synthetic, split: train, options: {n: 32}}, prompt: tags_brief, steps: 4,
     batch_size: 8, save_every: 2}
distill: {data: {name: synthetic, split: train, options: {n: 32}}, prompt: tags_brief, steps: 4, batch_size: 8,
          save_every: 2}
grpo: {data: {name: synthetic, split: train, options: {n: 16}}, prompt: tags_brief, steps: 3, prompts_per_step: 2,
       group_size: 4, max_new_tokens: 12, save_every: 1, lr: 1.0e-3}
eval: {benchmarks: [{name: synthetic, split: test, options: {n: 6}}], prompt: tags_brief, n: 2,
       max_new_tokens: 12, batch_size: 4}
pipelines:
  base: {stages: [{kind: pretrain}]}
  sft: {extends: base, stages: [{kind: sft}], evaluate: false}
  lora: {extends: base, stages: [{kind: sft, lora: {enabled: true, r: 4}}], evaluate: false}
  kd: {extends: base, stages: [{kind: kd}], evaluate: false}
  distill: {extends: base, stages: [{kind: distill, teacher: sft}], evaluate: false}
  rl1: {extends: sft, stages: [{kind: grpo}]}
  rl2: {extends: sft, stages: [{kind: grpo, mu: 2}], evaluate: false}
"""

# In the order the run reaches them; each one kills the process that reaches it, and the next command
# picks up from what that kill left on disk. Stages save a resume checkpoint every 2 steps (GRPO every 1).
FAULTS = [
    "start_model:mid_write",                 # the tiny start model half-written
    "pretrain:step=3",                       # after step 3: resumes from the step-2 checkpoint
    "pipeline:between_stages:pipeline=base",  # pretrain done, its pipeline's evaluation not begun
    "eval:after_problem=3",                  # half of base's evaluation written
    "sft:step=3",
    "checkpoint:mid_write:step=2",           # LoRA SFT's resume checkpoint half-written
    "model:mid_write",                       # LoRA SFT's final model half-written
    "kd:step=3",                             # sequence-level KD
    "distill:step=3",                        # logit-level distillation (teacher: the sft pipeline)
    "grpo:after_generate:step=2",            # rl1 (mu = 1): rollouts done, update not
    "grpo:step=2:hit=2",                     # rl1 passes its step 2, rl2 (mu = 2) dies after its own
    "report:mid_write",                      # every pipeline done, the report half-written
]
# Metrics that measure the clock, not the computation.
CLOCK = ("seconds", "per_s", "peak_memory")  # measurements that differ from run to run


def srlm_run(config: Path, run_dir: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SRLM_FAULT"}
    if fault:
        env["SRLM_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "srlm", "run", str(config), f"run_dir={run_dir}", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)


def without_clock(x):
    if isinstance(x, dict):
        return {k: without_clock(v) for k, v in x.items()
                if not any(c in k for c in CLOCK) and k not in ("model", "cost", "started", "finished")}
    if isinstance(x, list):
        return [without_clock(v) for v in x]
    return x


def outcome(run_dir: Path) -> dict:
    """Everything a run produces that does not depend on the clock or on where the folder is."""
    out = {}
    for p in sorted(run_dir.glob("*/pipeline.json")):
        info = json.loads(p.read_text())
        name = info["name"]
        out[name] = {"status": info["status"], "kinds": [st["kind"] for st in info["stages"]]}
        for st in info["stages"]:
            metrics = (run_dir / st["dir"] / "metrics.jsonl").read_text().splitlines()
            out[name][f"metrics {st['kind']}"] = [without_clock(json.loads(line)) for line in metrics]
        final = Path(info["final_checkpoint"])
        final = final if final.is_absolute() else run_dir / final
        out[name]["weights"] = load_file(str(final / "model.safetensors"))
        eval_dir = run_dir / name / "eval"
        if eval_dir.exists():
            out[name]["samples"] = (eval_dir / "synthetic" / "samples.jsonl").read_text()
            out[name]["summary"] = without_clock(json.loads((eval_dir / "summary.json").read_text()))
    import csv

    with open(run_dir / "accuracy.csv", newline="") as f:
        out["accuracy.csv"] = [without_clock(row) for row in csv.DictReader(f)]
    return out


def assert_same(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        if isinstance(a[k], dict):
            assert_same(a[k], b[k], f"{where}/{k}")
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{where}/{k}: {(a[k] - b[k]).abs().max()}"
        else:
            assert a[k] == b[k], f"{where}/{k}"


def test_killed_at_every_kind_of_point_resumes_to_the_uninterrupted_run(tmp_path):
    config = tmp_path / "kill.yaml"
    config.write_text(CONFIG)
    straight = tmp_path / "straight"
    assert main(["run", str(config), f"run_dir={straight}", "--no-progress"]) == 0

    run_dir = tmp_path / "killed"
    for fault in FAULTS:
        r = srlm_run(config, run_dir, fault)
        assert r.returncode == -signal.SIGKILL, f"{fault}: exit {r.returncode}\n{r.stderr[-3000:]}"
        assert re.search(rf"SRLM_FAULT: killed at {re.escape(parse(fault)[0].point)}(:|$)", r.stderr, re.M), \
            r.stderr[-2000:]
        if fault == "start_model:mid_write":  # the half-written folder is not where the run looks
            assert not (run_dir / "start-model").exists()
    r = srlm_run(config, run_dir, None)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]

    manifests = [json.loads(p.read_text()) for p in run_dir.glob("stages/*/manifest.json")]
    assert sorted(m["kind"] for m in manifests) == ["distill", "grpo", "grpo", "kd", "pretrain", "sft", "sft"]
    assert all(m["status"] == "done" for m in manifests)
    assert {m["kind"]: m["attempts"] for m in manifests if m["kind"] in ("pretrain", "kd", "distill")} == \
        {"pretrain": 2, "kd": 2, "distill": 2}  # each killed once, resumed once
    assert_same(outcome(straight), outcome(run_dir))
    assert (run_dir / "report.md").exists()


def test_fault_spec_parsing():
    from srlm.faults import Fault

    assert parse("sft:step=5") == [Fault("sft", {"step": "5"})]
    assert parse("grpo:after_generate:step=3, report:mid_write") == [
        Fault("grpo:after_generate", {"step": "3"}), Fault("report:mid_write")]
    assert parse("eval:after_problem=17:hit=2") == [Fault("eval", {"after_problem": "17", "hit": "2"})]
    with pytest.raises(ValueError):
        parse("step=3")


def test_fault_point_is_a_no_op_unless_it_matches(monkeypatch):
    from srlm import faults

    monkeypatch.delenv("SRLM_FAULT", raising=False)
    faults.fault_point("sft", step=5)  # unset: returns
    monkeypatch.setenv("SRLM_FAULT", "sft:step=5")
    faults.fault_point("sft", step=4)
    faults.fault_point("pretrain", step=5)
    faults.fault_point("sft:mid", step=5)  # the process is still alive: none of these matched
