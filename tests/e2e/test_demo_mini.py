"""A miniature `srlm run configs/demo.yaml`: every stage trains for real, a few steps each (< 1 minute)."""

import json
from pathlib import Path

import pytest

from srlm.cli import main

ROOT = Path(__file__).resolve().parents[2]

MINI = [
    "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
    "model.tiny.intermediate=64",
    "pretrain.steps=6", "pretrain.batch_size=8", "pretrain.data.options.n=64",
    "sft.steps=4", "sft.batch_size=8", "sft.data.options.n=32",
    "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=24",
    "grpo.data.options.n=16", "grpo.save_every=1",
    # KD on the synthetic set's own reference traces: an untrained teacher would get nothing right
    # (tests/e2e/test_kd_teacher.py covers a teacher pipeline).
    "kd.teacher=null", "kd.steps=4", "kd.batch_size=8", "kd.data.options.n=32",
    "eval.benchmarks=[{name: synthetic, split: test, options: {n: 12}}]", "eval.max_new_tokens=24", "eval.n=2",
]


@pytest.mark.e2e
def test_mini_demo_runs_every_stage(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", str(ROOT / "configs" / "demo.yaml"), f"run_dir={run_dir}", "--no-progress", *MINI])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (run_dir / "report.md").exists()
    report = (run_dir / "report.md").read_text()
    labels = ["tiny base", "tiny instruct"] + [f"{start} + {method}" for start in ("base", "instruct")
                                               for method in ("SFT", "SFT (LoRA)", "KD", "RL", "SFT + RL", "KD + RL")]
    for label in labels:
        assert f"| {label} |" in report and label in out
    # every pipeline but the base extends another one, so each gets a paired gain over its start
    gains = report.split("## What each stage adds")[1].split("## Compute cost")[0]
    assert "| base + SFT + RL | base + SFT | " in gains and "| tiny instruct | tiny base | " in gains
    assert sum(line.startswith("| ") for line in gains.splitlines()) == 1 + len(labels) - 1
    manifests = [json.loads(p.read_text()) for p in run_dir.glob("stages/*/manifest.json")]
    kinds = [m["kind"] for m in manifests]  # shared prefixes ran once: 14 pipelines, 14 stages
    assert {k: kinds.count(k) for k in set(kinds)} == {"pretrain": 1, "sft": 5, "kd": 2, "grpo": 6}
    for m in manifests:
        assert m["status"] == "done"
        assert Path(run_dir, m["output"]["checkpoint"], "config.json").exists()
        assert m["cost"]["wall_seconds"] > 0
        metrics = (run_dir / m["dir"] / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == m["config"]["steps"]
    lora = [m for m in manifests if m["config"].get("lora", {}).get("enabled")]
    assert len(lora) == 2 and all(Path(run_dir, m["output"]["checkpoint"], "adapter").exists() for m in lora)
    # every GRPO step logs its rollouts; a step whose advantages were all zero skips its update and says so
    steps = [json.loads(line) for m in manifests if m["kind"] == "grpo"
             for line in (run_dir / m["dir"] / "metrics.jsonl").read_text().splitlines()]
    for step in steps:
        for key in ("reward", "accuracy", "format_rate", "completion_len_mean", "truncation_rate",
                    "zero_var_groups", "skipped_update", "seconds/generate", "seconds/train"):
            assert key in step
    updated = [step for step in steps if not step["skipped_update"]]
    assert updated
    for step in updated:
        for key in ("loss", "kl", "entropy", "clip_fraction", "grad_norm"):
            assert key in step
    for name in ("base", "instruct", "base_sft", "instruct_kd_rl"):
        summary = json.loads((run_dir / name / "eval" / "summary.json").read_text())
        bench = summary["benchmarks"]["synthetic"]
        assert bench["n_problems"] == 12
        lines = (run_dir / name / "eval" / "synthetic" / "samples.jsonl").read_text().splitlines()
        assert len(lines) == 24  # 12 problems x 2 samples
        assert "2" in bench["pass_at_k"]
    assert (run_dir / "config.yaml").exists()
    for png in ("rl_curves.png", "loss_curves.png", "accuracy.png"):
        assert (run_dir / "plots" / png).stat().st_size > 1000
        assert f"(plots/{png})" in report
    assert (run_dir / "accuracy.csv").exists() and (run_dir / "accuracy.tex").exists()

    # Re-running skips every finished stage (manifests untouched) and gives the same table.
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("stages/*/manifest.json")}
    assert main(["run", str(ROOT / "configs" / "demo.yaml"), f"run_dir={run_dir}", "--no-progress", *MINI]) == 0
    after = {p: p.stat().st_mtime_ns for p in run_dir.glob("stages/*/manifest.json")}
    assert before == after
