"""A mini run from a model folder: the starting model gets its report row without an empty pipeline, the
progress line counts every stage and evaluation."""

import json
import re
from pathlib import Path

import pytest
import yaml

from srlm.cli import main
from srlm.tiny import TinySpec, write_tiny_model

pytestmark = pytest.mark.e2e


def mini_config(tmp_path, pipelines: dict, **top) -> str:
    start = write_tiny_model(tmp_path / "my-model", TinySpec(hidden=32, layers=1, heads=2, kv_heads=1,
                                                              intermediate=64))
    cfg = {"run_dir": str(tmp_path / "run"), "model": {"name_or_path": str(start)},
           "sft": {"data": {"name": "synthetic", "split": "train", "options": {"n": 32}}, "prompt": "tags_brief",
                   "steps": 4, "batch_size": 8},
           "eval": {"benchmarks": [{"name": "synthetic", "split": "test", "options": {"n": 12}}],
                    "prompt": "tags_brief", "n": 2, "max_new_tokens": 24},
           "pipelines": pipelines, **top}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_the_starting_model_gets_its_own_row_and_the_first_stage_its_gain(tmp_path, capsys):
    config = mini_config(tmp_path, {"sft": {"label": "start + SFT", "stages": [{"kind": "sft"}]}})
    assert main(["run", config, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[stage 1 of 3] start_my-model: evaluation of the starting model" in out
    assert "[stage 2 of 3] sft: sft" in out and "[stage 3 of 3] sft: evaluation" in out
    run = tmp_path / "run"
    info = json.loads((run / "start_my-model" / "pipeline.json").read_text())
    assert info["status"] == "done" and info["stages"] == [] and info["start_row"]
    report = (run / "report.md").read_text()
    table = report.split("## Accuracy")[1].split("##")[0]
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows == [f"| {tmp_path / 'my-model'}", "| start + SFT"]  # the start first, labelled by the model
    gains = report.split("## What each stage adds")[1].split("##")[0]
    assert f"| start + SFT | {tmp_path / 'my-model'} |" in gains  # SFT paired with the model it started from


def test_a_stage_less_pipeline_already_gives_the_row(tmp_path):
    config = mini_config(tmp_path, {"base": {"label": "my base"},
                                    "sft": {"label": "start + SFT", "stages": [{"kind": "sft"}]}})
    assert main(["run", config, "--no-progress"]) == 0
    assert not (tmp_path / "run" / "start_my-model").exists()


def test_a_two_seed_pipeline_runs_its_stage_per_seed_and_reports_the_spread(tmp_path, capsys):
    config = mini_config(tmp_path, {"sft": {"label": "start + SFT", "seeds": [0, 1], "stages": [{"kind": "sft"}]}})
    assert main(["run", config, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[stage 5 of 5] sft/seed1: evaluation" in out  # start eval, then SFT and its eval per seed
    run = tmp_path / "run"
    seeds = {s: json.loads((run / "sft" / f"seed{s}" / "pipeline.json").read_text()) for s in (0, 1)}
    dirs = {s: seeds[s]["stages"][0]["dir"] for s in (0, 1)}
    assert dirs[0] != dirs[1]  # one SFT stage per seed, with its seed in its config
    assert [json.loads((run / dirs[s] / "manifest.json").read_text())["config"]["seed"] for s in (0, 1)] == [0, 1]
    assert json.loads((run / "sft" / "pipeline.json").read_text())["seeds"] == {"0": "seed0", "1": "seed1"}
    report = (run / "report.md").read_text()
    row = next(line for line in report.split("## Accuracy")[1].splitlines() if line.startswith("| start + SFT"))
    assert re.fullmatch(r"\| start \+ SFT \| (\*\*)?\d+\.\d ± \d+\.\d \(SD \d+\.\d, 2 seeds\)(\*\*)? \|", row), row
    gains = report.split("## What each stage adds")[1].split("##")[0]
    assert re.search(r"\| start \+ SFT \| .*my-model \| .*\([+-]\d+\.\d, [+-]\d+\.\d\) \|", gains), gains
    # a re-run reuses both seeds' stages: no stage line but evaluations' (found complete), manifests untouched
    before = {m: m.stat().st_mtime_ns for m in run.glob("stages/*/manifest.json")}
    assert main(["run", config, "--no-progress"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[stage")]
    assert len(lines) == 3 and all("evaluation" in x for x in lines), lines
    assert before == {m: m.stat().st_mtime_ns for m in run.glob("stages/*/manifest.json")}
