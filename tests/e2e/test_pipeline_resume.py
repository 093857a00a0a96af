"""Killing `srlm run` in the middle of the second pipeline and re-running redoes no finished stage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_demo_mini import MINI, ROOT

pytestmark = pytest.mark.e2e


def _manifests(run_dir: Path) -> dict[str, dict]:
    out = {}
    for p in run_dir.glob("stages/*/manifest.json"):
        try:
            out[p.parent.name] = json.loads(p.read_text())
        except json.JSONDecodeError:
            pass
    return out


def test_kill_during_second_pipeline_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    # SFT slow enough (many small steps, a resume checkpoint every 2) to be killed in the middle of it
    args = [sys.executable, "-m", "srlm", "run", str(ROOT / "configs" / "demo.yaml"), f"run_dir={run_dir}",
            "--no-progress", *MINI, "sft.steps=16", "sft.save_every=2", "--only", "base,base_sft,base_sft_rl"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 900
    try:
        while time.time() < deadline:
            sft = [m for n, m in _manifests(run_dir).items() if n.startswith("sft-")]
            if sft and sft[0]["status"] == "running" and (Path(sft[0]["dir"]) / "resume").exists():
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("the second pipeline's stage never started")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    before = _manifests(run_dir)
    pre = next(m for n, m in before.items() if n.startswith("pretrain-"))
    assert pre["status"] == "done"
    sft_before = next(m for n, m in before.items() if n.startswith("sft-"))
    assert sft_before["status"] == "running"
    assert (run_dir / "base" / "pipeline.json").exists()

    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _manifests(run_dir)
    pre_after = next(m for n, m in after.items() if n.startswith("pretrain-"))
    assert pre_after["finished"] == pre["finished"] and pre_after["attempts"] == 1  # not redone
    sft_after = next(m for n, m in after.items() if n.startswith("sft-"))
    assert sft_after["status"] == "done" and sft_after["attempts"] == 2
    # the SFT stage resumed from its checkpoint: its metrics cover each step exactly once
    steps = [json.loads(x)["step"] for x in (Path(sft_after["dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))
    assert all(m["status"] == "done" for m in after.values())
    assert (run_dir / "report.md").exists()
