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
    barrier), also when a stage failed (a gloo peer exiting with the group open aborted rank 1 once in CI);
    rank 0 alone writes the tiny start model (two ranks writing one folder crashed one of them)."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

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
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert "loss is NaN" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    for rank in (0, 1):
        assert f"rank {rank}: exit 1, process group open: False" in proc.stdout, (proc.stdout + proc.stderr)[-2000:]


def deny_writes_under(monkeypatch, folder):
    """Make every write under `folder` fail as on a read-only folder (the host runs as root, which chmod
    does not stop): file opens for writing, the lock's os.open, renames into it and mkdir raise EACCES."""
    import builtins
    import errno
    import io

    folder = os.path.abspath(folder)

    def deny(path):
        if os.path.abspath(path) == folder or os.path.abspath(path).startswith(folder + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    real_open, real_os_open, real_replace, real_rename, real_mkdir = (
        builtins.open, os.open, os.replace, os.rename, os.mkdir)

    def opener(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            deny(file)
        return real_open(file, mode, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "replace", lambda a, b, *x, **k: (deny(b), real_replace(a, b, *x, **k))[1])
    monkeypatch.setattr(os, "rename", lambda a, b, *x, **k: (deny(b), real_rename(a, b, *x, **k))[1])
    monkeypatch.setattr(os, "mkdir", lambda p, *x, **k: (deny(p), real_mkdir(p, *x, **k))[1])


def files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("srlm: error")]


def test_a_read_only_run_folder_or_output_is_one_line_and_loses_nothing(config, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert run(config, run_dir) == 0
    before = files(run_dir)
    capsys.readouterr()
    with monkeypatch.context() as m:  # the whole folder read-only: refused before anything runs
        deny_writes_under(m, run_dir)
        assert run(config, run_dir, "pretrain.steps=3") == 2
    assert capsys.readouterr().err.strip() == f"srlm: error: {run_dir}: read-only (cannot write .srlm.lock there)"
    assert files(run_dir) == before
    with monkeypatch.context() as m:  # one output read-only: one line naming it, the old file kept, no litter
        deny_writes_under(m, run_dir / "report.md")
        assert run(config, run_dir) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"srlm: error: Permission denied: {run_dir / 'report.md'}; free space or fix permissions, then re-run the "
        f"same command to resume"]
    assert (run_dir / "report.md").read_bytes() == before["report.md"] and not list(run_dir.glob(".*.tmp*"))
    (tmp_path / "a-file").write_text("")
    assert run(config, tmp_path / "a-file" / "run") == 2  # a folder above the run folder is a file
    assert error_lines(capsys.readouterr().err) == [
        f"srlm: error: {tmp_path / 'a-file' / 'run'}: cannot create the folder: {tmp_path / 'a-file'} is a file; "
        f"choose another folder"]


def test_a_read_only_eval_output_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys):
    from srlm.tiny import TinySpec, write_tiny_model

    model = write_tiny_model(tmp_path / "tiny", TinySpec(**TINY))
    out = tmp_path / "eval"

    def evaluate(out, limit):
        return main(["eval", "--model", str(model), "--benchmarks", "synthetic", "--out", str(out), "--no-progress",
                     "--limit", str(limit), "--max-new-tokens", "2"])

    assert evaluate(out, 2) == 0
    before = files(out)
    capsys.readouterr()
    with monkeypatch.context() as m:
        deny_writes_under(m, out)
        assert evaluate(out, 3) == 2
    assert capsys.readouterr().err.strip() == f"srlm: error: {out}: read-only (cannot write .srlm.lock there)"
    with monkeypatch.context() as m:  # the benchmark's folder read-only: one line naming the file
        deny_writes_under(m, out / "synthetic")
        assert evaluate(out, 3) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"srlm: error: Permission denied: {out / 'synthetic' / 'samples.jsonl'}; free space or fix permissions, "
        f"then re-run the same command to resume"]
    assert files(out) == before  # the samples and summary of the finished evaluation are all there
    (tmp_path / "a-file").write_text("")
    assert evaluate(tmp_path / "a-file" / "eval", 2) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"srlm: error: {tmp_path / 'a-file' / 'eval'}: cannot create the folder: {tmp_path / 'a-file'} is a file; "
        f"choose another folder"]
