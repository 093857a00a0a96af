"""A run folder is safe to re-run, move, copy and share: a speed knob never discards an evaluation, a
protocol change is refused with one line before any stage runs (and leaves config.yaml alone), paths are
relative to the folder, a second process is refused, and an evaluation error fails only its pipeline."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from srlm.cli import main

pytestmark = pytest.mark.e2e

CONFIG = """
device: cpu
model: {name_or_path: tiny, tiny: {hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64}}
pretrain: {data: {name: synthetic, split: train, options: {n: 16}}, steps: 2, batch_size: 4}
sft: {data: {name: synthetic, split: train, options: {n: 16}}, prompt: tags_brief, steps: 2, batch_size: 4}
eval: {benchmarks: [{name: synthetic, split: test, options: {n: 4}}], prompt: tags_brief, n: 2, max_new_tokens: 8,
       batch_size: 4}
pipelines:
  base: {stages: [{kind: pretrain}]}
  sft: {extends: base, stages: [{kind: sft}]}
"""


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    return path


def run(config, run_dir, *overrides) -> int:
    return main(["run", str(config), f"run_dir={run_dir}", "--no-progress", *overrides])


def attempts(run_dir) -> dict[str, int]:
    return {p.parent.name: json.loads(p.read_text())["attempts"] for p in run_dir.glob("stages/*/manifest.json")}


def test_batch_size_keeps_the_evaluation_and_a_protocol_change_is_refused(config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(config, run_dir) == 0
    assert json.loads((run_dir / "environment.json").read_text())["switches"]["OMP_NUM_THREADS"] == "1"
    samples = run_dir / "sft" / "eval" / "synthetic" / "samples.jsonl"
    before = (samples.read_text(), samples.stat().st_mtime_ns)
    assert run(config, run_dir, "eval.batch_size=1") == 0  # speed only: nothing evaluated again
    assert (samples.read_text(), samples.stat().st_mtime_ns) == before
    saved = (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert run(config, run_dir, "eval.n=3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another protocol" in err and "n: 2 there, 3 now" in err
    assert (run_dir / "config.yaml").read_text() == saved and samples.stat().st_mtime_ns == before[1]
    assert run(config, run_dir, "grpo.aggregation=nope") == 2  # a refused config leaves config.yaml too
    assert (run_dir / "config.yaml").read_text() == saved


def test_a_moved_or_copied_run_folder_resumes_from_its_own_stages(config, tmp_path):
    first = tmp_path / "first"
    assert run(config, first) == 0
    done = attempts(first)
    info = json.loads((first / "sft" / "pipeline.json").read_text())
    assert not os.path.isabs(info["final_checkpoint"]) and all(not os.path.isabs(s["dir"]) for s in info["stages"])
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    moved = tmp_path / "moved"
    first.rename(moved)  # the original is gone: the copy must not need it
    for folder in (copy, moved):
        assert run(config, folder) == 0
        assert attempts(folder) == done  # nothing redone
        assert (folder / "plots" / "loss_curves.png").stat().st_size > 1000


def test_a_second_process_on_the_folder_is_refused(config, tmp_path, capsys):
    from srlm.runlock import locked

    run_dir = tmp_path / "run"
    with locked(run_dir):  # as if another `srlm run` (this very process) held it
        assert run(config, run_dir) == 2
    err = capsys.readouterr().err
    assert f"in use by pid {os.getpid()}" in err and not list(run_dir.glob("stages/*"))


def test_an_evaluation_error_fails_its_pipeline_only(config, tmp_path, monkeypatch, capsys):
    import srlm.pipeline as pipeline

    real = pipeline.evaluate_checkpoint

    def broken_for_base(cfg, path, key, out_dir, device, progress, **kw):
        if out_dir.parent.name == "base":
            raise RuntimeError("the engine fell over")
        return real(cfg, path, key, out_dir, device, progress, **kw)

    monkeypatch.setattr(pipeline, "evaluate_checkpoint", broken_for_base)
    run_dir = tmp_path / "run"
    assert run(config, run_dir) == 1
    base = json.loads((run_dir / "base" / "pipeline.json").read_text())
    assert base["status"] == "failed" and base["reason"] == "evaluation: RuntimeError: the engine fell over"
    assert json.loads((run_dir / "sft" / "pipeline.json").read_text())["status"] == "done"
    assert (run_dir / "report.md").exists()


def test_environment_switches_land_in_config_yaml_and_keep_the_stage_keys(config, tmp_path, monkeypatch):
    """SRLM_FSDP / SRLM_COMPILE are config fields (the env var turns them on at load): the run's config.yaml
    records them, and a field at its default, or an execution field turned on, leaves stage keys alone."""
    import yaml

    run_dir = tmp_path / "run"
    assert run(config, run_dir) == 0
    done = attempts(run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["sft"]["fsdp"] is False
    monkeypatch.setenv("SRLM_FSDP", "1")  # one process: FSDP does not shard, the result is the same
    assert run(config, run_dir) == 0
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert all(recorded[kind]["fsdp"] is True for kind in ("pretrain", "sft", "kd", "distill"))
    assert recorded["grpo"]["fsdp"] is False and recorded["sft"]["compile"] is False
    assert json.loads((run_dir / "environment.json").read_text())["switches"]["SRLM_FSDP"] == "1"
    assert attempts(run_dir) == done  # same stage keys: nothing redone


TINY = dict(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)  # CONFIG's
DIST_WRAPPER = """
import os, sys
import torch.distributed as dist
from srlm.cli import main
code = main(sys.argv[1:])
print(f"rank {os.environ['RANK']}: exit {code}, process group open: {dist.is_initialized()}", flush=True)
sys.exit(code)
"""


def test_a_two_process_run_closes_its_process_group_on_every_rank(tmp_path):
    """`torchrun --nproc_per_node 2 srlm run`: every rank leaves the process group at the end (after a
    barrier), also when a stage failed (a gloo peer exiting with the group open aborted rank 1 once in CI)."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from srlm.tiny import TinySpec, write_tiny_model

    path = tmp_path / "run.yaml"
    path.write_text(CONFIG + "  bad: {stages: [{kind: pretrain, lr: 1.0e+30}], evaluate: false}\n"
                    "evaluate_starts: false\n")
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(DIST_WRAPPER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(wrapper), "run", str(path), f"run_dir={tmp_path / 'run'}",
           "--no-progress", "--only", "base,bad", "pipelines.base.evaluate=false"]
    # a written start model: two ranks building the tiny one into one folder race (see the i16c note)
    cmd.append(f"model.name_or_path={write_tiny_model(tmp_path / 'tiny', TinySpec(**TINY))}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert "loss is NaN" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    for rank in (0, 1):
        assert f"rank {rank}: exit 1, process group open: False" in proc.stdout, (proc.stdout + proc.stderr)[-2000:]
