"""The benchmark scripts run and print their JSON (a smoke test: no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srlm.tiny import TinySpec, write_tiny_model
from srlm.train.optim import cpu_has_bf16

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m",
                            TinySpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64))


def run_benchmark(name: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sft_throughput_runs(tiny):
    out = run_benchmark("sft_throughput.py", "--model", str(tiny), "--steps", "2", "--batch", "4")
    assert out["tokens_per_s"] > 0 and out["steps"] == 2


def test_sft_throughput_runs_packed(tiny):
    out = run_benchmark("sft_throughput.py", "--model", str(tiny), "--steps", "2", "--batch", "4", "--packing")
    assert out["tokens_per_s"] > 0 and out["packing"] is True


@pytest.mark.skipif(not cpu_has_bf16(),
                    reason="this CPU has no bf16 instructions (--bf16 is refused there)")
def test_sft_throughput_runs_under_bf16(tiny):
    out = run_benchmark("sft_throughput.py", "--model", str(tiny), "--steps", "2", "--batch", "4", "--bf16")
    assert out["tokens_per_s"] > 0 and out["bf16"] is True


def test_grpo_step_runs(tiny):
    out = run_benchmark("grpo_step.py", "--model", str(tiny), "--steps", "2")
    assert out["median_step_s"] > 0


def test_generation_runs(tiny):
    out = run_benchmark("generation.py", "--model", str(tiny), "--prompts", "4", "--max-new-tokens", "8",
                        "--repeats", "1")
    assert out


def test_grading_runs(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps(c) for c in [
        {"response": "<think>2+2</think><answer>4</answer>", "gold": "4", "expected": True},
        {"response": "\\boxed{\\frac12}", "gold": "0.5", "expected": True},
        {"response": "#### 7", "gold": "8", "expected": False}]) + "\n")
    out = run_benchmark("grading.py", str(cases))
    assert out["srlm"]["accuracy"] == 1.0 and out["srlm_hostile"]["cases"] > 0


def test_decode_step_runs(tiny):
    out = run_benchmark("decode_step.py", "--model", str(tiny), "--rows", "4", "--width", "8", "--rounds", "1",
                        "--steps", "3")
    assert out["packed_step_us"] > 0 and out["plain_step_us"] > 0 and out["in_place_step_us"] > 0
    assert out["rows"] == 4 and out["default"] == "fused"  # a small model keeps its fused copies


def test_stop_repetition_runs(tiny):
    # the random tiny model loops when greedy: stopping the loops saves tokens and changes no answer
    out = run_benchmark("stop_repetition.py", "--model", str(tiny), "--limit", "4", "--max-new-tokens", "300",
                        "--temperature", "0", "--rounds", "1")
    assert out["runs"]["off"][0]["truncation_rate"] == 1.0 and out["runs"]["on"][0]["repetition_stopped_rate"] > 0
    assert out["saved"]["tokens"] > 0 and out["saved"]["accuracy_change"] == 0
