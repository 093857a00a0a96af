"""A hand-made run folder (no training): what the report reads, written directly, for report tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml


def write_stage(run_dir: Path, name: str, kind: str, steps: int, seconds: float = 10.0) -> dict:
    """A finished stage folder with `steps` lines of metrics; returns its pipeline.json entry."""
    d = run_dir / "stages" / name
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, steps + 1):
        if kind == "grpo":
            m = {"step": s, "reward": -1 + 2 * s / steps, "accuracy": 0.2 + 0.4 * s / steps + 0.05 * math.sin(s),
                 "format_rate": min(1.0, 0.5 + s / steps), "kl": 0.001 * s, "completion_len_mean": 40 + s % 3,
                 "truncation_rate": 0.05 * (s % 2), "loss": 0.1}
        else:
            m = {"step": s, "loss": 3.0 / s + 0.1 * (s % 2)}
        lines.append(json.dumps(m))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    cost = {"wall_seconds": seconds, "device": "cpu (test, 2 threads)", "device_count": 1,
            "device_hours": seconds / 3600, "tokens": 1000 * steps, "peak_memory_gb": 0.5}
    return {"kind": kind, "status": "done", "reason": None, "dir": str(d), "cost": cost}


def write_pipeline(run_dir: Path, name: str, stages: list[dict], correct: dict[str, list[int]],
                   protocol: dict | None = None, format_rate: float | None = 1.0) -> None:
    """A finished pipeline: pipeline.json, one `synthetic` evaluation with per-sample correctness."""
    folder = run_dir / name / "eval"
    (folder / "synthetic").mkdir(parents=True, exist_ok=True)
    (run_dir / name / "pipeline.json").write_text(json.dumps(
        {"name": name, "status": "done", "reason": None, "stages": stages, "final_checkpoint": None}))
    per_problem = [sum(c) / len(c) for c in correct.values()]
    mean = sum(per_problem) / len(per_problem)
    se = (sum((p - mean) ** 2 for p in per_problem) / (len(per_problem) - 1) / len(per_problem)) ** 0.5
    n = len(next(iter(correct.values())))
    summary = {"benchmarks": {"synthetic": {
        "accuracy": mean, "accuracy_se": se, "n_problems": len(correct), "n_samples": n, "format_rate": format_rate,
        "extraction_rate": 1.0, "no_answer": False, "truncation_rate": 0.0, "repetition_rate": 0.0,
        "mean_response_tokens": 40.0, "p95_response_tokens": 44, "tokens_generated": 40 * n * len(correct),
        "wall_seconds": 2.0}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "eval_settings.json").write_text(json.dumps({"protocol": protocol or {"n": n, "temperature": 0.6}}))
    lines = [json.dumps({"id": pid, "sample": j, "correct": bool(c)}) for pid, cs in correct.items()
             for j, c in enumerate(cs)]
    (folder / "synthetic" / "samples.jsonl").write_text("\n".join(lines) + "\n")


def make_run(run_dir: Path) -> Path:
    """base (pretrain) -> base + SFT -> base + SFT + RL, and base + RL: four rows, one starting model."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pre = write_stage(run_dir, "pretrain-a", "pretrain", 30, 100.0)
    sft = write_stage(run_dir, "sft-b", "sft", 12, 20.0)
    rl = write_stage(run_dir, "grpo-c", "grpo", 25, 50.0)
    rl2 = write_stage(run_dir, "grpo-d", "grpo", 25, 40.0)
    pipelines = {"base": {"label": "tiny base"}, "base_sft": {"label": "base + SFT", "extends": "base"},
                 "base_sft_rl": {"label": "base + SFT + RL", "extends": "base_sft"},
                 "base_rl": {"label": "base + RL", "extends": "base"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "tiny"}, "pipelines": pipelines},
                                                         sort_keys=False))
    problems = [f"p{i}" for i in range(8)]
    write_pipeline(run_dir, "base", [pre], {p: [0, 0] for p in problems})
    write_pipeline(run_dir, "base_sft", [pre, sft], {p: [i % 2, 0] for i, p in enumerate(problems)})
    write_pipeline(run_dir, "base_sft_rl", [pre, sft, rl], {p: [1, i % 2] for i, p in enumerate(problems)})
    write_pipeline(run_dir, "base_rl", [pre, rl2], {p: [i % 3 == 0, 0] for i, p in enumerate(problems)})
    return run_dir


def write_seed_runs(run_dir: Path, name: str, runs: dict[int, tuple[list[dict], dict[str, list[int]]]]) -> None:
    """A pipeline run once per seed: RUN/<name>/seed<s>/ per seed, and RUN/<name>/pipeline.json listing them."""
    for seed, (stages, correct) in runs.items():
        write_pipeline(run_dir / name, f"seed{seed}", stages, correct)
    union = list({st["dir"]: st for stages, _ in runs.values() for st in stages}.values())
    (run_dir / name / "pipeline.json").write_text(json.dumps(
        {"name": name, "status": "done", "reason": None, "stages": union, "final_checkpoint": None,
         "seeds": {str(s): f"seed{s}" for s in runs}}))


def make_seed_run(run_dir: Path) -> Path:
    """tiny base (one run) -> base + SFT over seeds 0 and 1 -> base + SFT + RL over the same seeds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pre = write_stage(run_dir, "pretrain-a", "pretrain", 10)
    sft = {s: write_stage(run_dir, f"sft-s{s}", "sft", 6) for s in (0, 1)}
    rl = {s: write_stage(run_dir, f"grpo-s{s}", "grpo", 8) for s in (0, 1)}
    pipelines = {"base": {"label": "tiny base"},
                 "base_sft": {"label": "base + SFT", "extends": "base", "seeds": [0, 1]},
                 "base_sft_rl": {"label": "base + SFT + RL", "extends": "base_sft"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "tiny"}, "pipelines": pipelines},
                                                         sort_keys=False))
    write_pipeline(run_dir, "base", [pre], {"a": [0, 0], "b": [0, 0], "c": [0, 0], "d": [0, 0]})
    write_seed_runs(run_dir, "base_sft", {
        0: ([pre, sft[0]], {"a": [1, 1], "b": [1, 0], "c": [0, 0], "d": [0, 0]}),   # 37.5 %
        1: ([pre, sft[1]], {"a": [1, 1], "b": [1, 1], "c": [1, 0], "d": [0, 0]})})  # 62.5 %
    write_seed_runs(run_dir, "base_sft_rl", {
        0: ([pre, sft[0], rl[0]], {"a": [1, 1], "b": [1, 1], "c": [0, 0], "d": [0, 0]}),   # 50 %: +12.5
        1: ([pre, sft[1], rl[1]], {"a": [1, 1], "b": [1, 1], "c": [1, 1], "d": [1, 0]})})  # 87.5 %: +25
    return run_dir
