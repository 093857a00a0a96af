"""`srlm eval` end to end on the tiny model and the shared benchmark files: the files it writes, resuming
after an interruption to the same summary, refusing to mix settings, sharding over processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from srlm.cli import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no benchmark data at {DATA}")
SAMPLE_FIELDS = {"id", "sample", "prompt", "response", "extracted", "gold", "correct", "format_ok", "tokens",
                 "finish_reason"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from srlm.tiny import TinySpec, write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=32, layers=1, heads=2, kv_heads=1,
                                                                      intermediate=64))


def eval_args(model_dir, out, *extra):
    return ["eval", "--model", str(model_dir), "--data-path", str(DATA), "--out", str(out), "--no-progress", *extra]


def without_wall(summary: dict) -> dict:
    """The summary minus what depends on the clock, and the measured peak memory (the allocator's)."""
    if isinstance(summary, dict):
        return {k: without_wall(v) for k, v in summary.items() if "wall" not in k and k != "peak_memory_gb"}
    return summary


@needs_data
@pytest.mark.e2e
def test_eval_writes_samples_summary_and_table(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    benches = ["gsm8k", "math500", "minerva_math", "olympiadbench", "amc23", "aime24"]
    code = main(eval_args(model_dir, out, "--benchmarks", ",".join(benches), "--limit", "3", "--n", "2",
                          "--max-new-tokens", "12", "--batch-size", "16"))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["benchmarks"]) == benches
    assert summary["srlm_version"] and "grader_version" in summary and summary["engine"] == "hf"
    assert summary["settings"]["temperature"] == 0.6 and summary["settings"]["top_p"] == 0.95  # the paper's
    assert summary["settings"]["n"] == 2 and summary["settings"]["max_new_tokens"] == 12
    for name in benches:
        lines = [json.loads(x) for x in (out / name / "samples.jsonl").read_text().splitlines()]
        assert len(lines) == 3 * 2 and len({(s["id"], s["sample"]) for s in lines}) == 6
        assert all(SAMPLE_FIELDS <= set(s) and 1 <= s["tokens"] <= 12 for s in lines)
        s = summary["benchmarks"][name]
        assert s["n_problems"] == 3 and s["n_samples"] == 2 and s["complete"]
        assert set(s["pass_at_k"]) == {"1", "2"} and s["pass_at_k"]["1"]["value"] == s["accuracy"]
        assert s["tokens_generated"] == sum(x["tokens"] for x in lines)
        for key in ("accuracy_se", "format_rate", "extraction_failure_rate", "no_answer", "wall_seconds"):
            assert key in s
        assert s["peak_memory_gb"] > 0  # this process's, while it generated (hf engine)
        assert name in printed.out
    assert "accuracy (%)" in printed.out and "pass@k" in printed.out
    assert "peak memory while generating (GiB): gsm8k " in printed.out
    assert "summary.json records the measured peak" in printed.err  # the estimate line says where it goes


@needs_data
@pytest.mark.e2e
def test_killed_eval_resumes_to_the_same_summary(model_dir, tmp_path):
    """`srlm eval` killed (SIGKILL through SRLM_FAULT) after 3 problems of gsm8k, a torn line appended as a
    kill mid-write would leave, then resumed with another batch size: the same samples and summary."""
    import signal

    args = ["--benchmarks", "gsm8k,amc23", "--limit", "5", "--n", "2", "--max-new-tokens", "10",
            "--temperature", "0.8"]
    assert main(eval_args(model_dir, tmp_path / "whole", *args, "--batch-size", "1")) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "SRLM_FAULT": "eval:after_problem=3:benchmark=gsm8k"}
    killed = subprocess.run([sys.executable, "-m", "srlm", *eval_args(model_dir, cut, *args, "--batch-size", "1")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len((cut / "gsm8k" / "samples.jsonl").read_text().splitlines()) == 3 * 2  # what was written survived
    with open(cut / "gsm8k" / "samples.jsonl", "a") as f:
        f.write('{"id": "torn')  # a line cut short by the kill
    assert main(eval_args(model_dir, cut, *args, "--batch-size", "16")) == 0
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((cut / "summary.json").read_text())
    assert without_wall(resumed["benchmarks"]) == without_wall(whole["benchmarks"])
    for name in ("gsm8k", "amc23"):
        lines = sorted((cut / name / "samples.jsonl").read_text().splitlines())  # in the order they finished
        assert lines == sorted((tmp_path / "whole" / name / "samples.jsonl").read_text().splitlines())


@needs_data
@pytest.mark.e2e
def test_eval_refuses_to_mix_settings(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    base = eval_args(model_dir, out, "--benchmarks", "gsm8k", "--limit", "2", "--max-new-tokens", "4")
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--temperature", "0"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "temperature" in err and "--overwrite" in err and "Traceback" not in err
    assert main([*base, "--temperature", "0", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["temperature"] == 0.0
    assert main([*base, "--temperature", "0", "--batch-size", "3"]) == 0  # speed knobs may change
    capsys.readouterr()
    assert main([*base, "--temperature", "0", "--dtype", "bfloat16"]) == 2  # the weights' dtype may not
    err = capsys.readouterr().err
    assert "other settings" in err and "dtype" in err and "Traceback" not in err


def test_merge_shards_orders_dedups_and_removes_shards(tmp_path):
    from srlm.evaluate import all_samples, merge_shards

    records = [{"id": f"p{i}"} for i in range(4)]
    rec = lambda i, j: json.dumps({"id": f"p{i}", "sample": j}) + "\n"  # noqa: E731
    (tmp_path / "samples.jsonl").write_text(rec(0, 0) + rec(0, 1))
    (tmp_path / "samples.rank0.jsonl").write_text(rec(2, 1) + rec(2, 0) + rec(0, 0))
    (tmp_path / "samples.rank1.jsonl").write_text(rec(3, 0) + rec(1, 0) + '{"id": "p1", "sam')
    merged = merge_shards(tmp_path, records)
    want = [("p0", 0), ("p0", 1), ("p1", 0), ("p2", 0), ("p2", 1), ("p3", 0)]
    assert [(s["id"], s["sample"]) for s in merged] == want
    assert not list(tmp_path.glob("samples.rank*"))
    assert [(s["id"], s["sample"]) for s in all_samples(tmp_path)] == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data
@pytest.mark.e2e
def test_eval_shards_over_two_processes(model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 srlm eval`: each rank writes its shard, rank 0 merges; greedy results
    equal a single-process run."""
    args = ["--benchmarks", "gsm8k,amc23", "--limit", "5", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(eval_args(model_dir, tmp_path / "one", *args)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "srlm",
           *eval_args(model_dir, tmp_path / "two", *args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2
    strip = lambda s: without_wall({k: v for k, v in s.items() if k != "world_size"})  # noqa: E731
    assert strip(two) == strip(one)
    for name in ("gsm8k", "amc23"):
        folder = tmp_path / "two" / name
        assert not list(folder.glob("samples.rank*")) and len((folder / "samples.jsonl").read_text().splitlines()) == 5


class _Echo(BaseHTTPRequestHandler):
    """Minimal OpenAI-compatible completions server: answers `<answer>42</answer>` to everything."""

    def log_message(self, *args):
        pass

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"data": [{"id": "served", "max_model_len": 2048}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send({"choices": [{"index": j, "text": "<think>t</think><answer>42</answer>", "finish_reason": "stop"}
                                for j in range(body["n"])], "usage": {"completion_tokens": 9 * body["n"]}})


@needs_data
@pytest.mark.e2e
def test_eval_with_openai_engine_against_local_server(model_dir, tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "eval"
        code = main(["eval", "--engine", "openai", "--model", "served", "--tokenizer", str(model_dir),
                     "--base-url", f"http://127.0.0.1:{httpd.server_address[1]}/v1", "--data-path", str(DATA),
                     "--benchmarks", "gsm8k", "--limit", "4", "--n", "2", "--out", str(out), "--no-progress"])
        assert code == 0
        s = json.loads((out / "summary.json").read_text())["benchmarks"]["gsm8k"]
        assert s["format_rate"] == 1.0 and s["extraction_failure_rate"] == 0.0 and s["n_problems"] == 4
        assert s["peak_memory_gb"] is None  # the server's memory is not this process's
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.e2e
def test_a_second_eval_on_one_out_folder_is_refused(model_dir, tmp_path, capsys):
    from srlm.runlock import locked

    out = tmp_path / "eval"
    with locked(out):  # as if another `srlm eval --out` (this very process) were writing there
        assert main(["eval", "--model", str(model_dir), "--benchmarks", "synthetic", "--out", str(out),
                     "--no-progress", "--limit", "2", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"in use by pid {os.getpid()}" in err and len(err.strip().splitlines()) == 1
    assert not (out / "synthetic").exists()
