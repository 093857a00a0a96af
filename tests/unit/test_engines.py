"""Engines: hf greedy equals `model.generate`, seeded sampling is independent of batching, stop rules,
the openai engine against a local test server (retries, errors), and the engine registry."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from srlm.engines import EngineOptions, build_engine
from srlm.engines.base import SamplingParams, prompt_seeds
from srlm.engines.hf import HFEngine, sample_next
from srlm.engines.openai import OpenAIEngine
from srlm.errors import UserError

PROMPTS = ["What is 2+2?", "Natalia sold clips to 48 of her friends in April.", "x", "abc def ghi jkl mno",
           "Compute 7*8 quickly please", "Why?", "A longer question about trains leaving stations at noon."]


@pytest.fixture(scope="module")
def tiny():
    """A tiny model with large random weights: its greedy outputs differ per prompt and hit EOS at
    different lengths (the default initialisation decodes one repeated token for every prompt)."""
    from srlm.tiny import TinySpec, build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(TinySpec(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, max_positions=256),
                        len(tok), tok.pad_token_id, tok.eos_token_id).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    return model, tok


def encode(tok, texts):
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def reference_greedy(model, tok, prompts, max_new, stops):
    """`model.generate` on the whole batch, left padded, cut after the first stop token."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id)  # [B, T]
    mask = torch.zeros_like(ids)  # [B, T]
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=stops, pad_token_id=tok.pad_token_id)
    rows = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_hf_greedy_equals_model_generate(tiny, batch_size, lean):
    model, tok = tiny
    prompts = encode(tok, PROMPTS)
    free = reference_greedy(model, tok, prompts, 24, [tok.eos_token_id])
    # stop tokens that end the responses at different lengths: EOS and two tokens met along the way
    stops = sorted({tok.eos_token_id, free[0][5], free[1][9]})
    want = reference_greedy(model, tok, prompts, 24, stops)
    assert len({len(w) for w in want}) > 2, "the test model should stop at different lengths"
    engine = HFEngine(model, tok, batch_size=batch_size, lean=lean)  # 3 < 7 prompts: rows join a running batch
    got = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=tuple(stops)))
    assert [g[0].token_ids for g in got] == want
    # n samples of a prompt share its prefill: greedy, every copy is the reference
    twice = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.0, n=2,
                                                    stop_token_ids=tuple(stops)))
    assert [[c.token_ids for c in g] for g in twice] == [[w, w] for w in want]
    for g, w in zip(got, want):
        assert g[0].finish_reason == ("stop" if w[-1] in stops else "length")
        assert g[0].text == tok.decode(w, skip_special_tokens=True)


def test_hf_sampling_is_independent_of_batching(tiny):
    model, tok = tiny
    prompts = encode(tok, PROMPTS)
    sampling = SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.9, n=2, stop_token_ids=(tok.eos_token_id,))
    seeds = [100 + i for i in range(len(prompts))]
    a = HFEngine(model, tok, batch_size=4).generate(prompts, sampling, seeds=seeds)
    b = HFEngine(model, tok, batch_size=32).generate(prompts, sampling, seeds=seeds)
    part = HFEngine(model, tok, batch_size=4).generate(prompts[3:], sampling, seeds=seeds[3:])
    tokens = lambda out: [[c.token_ids for c in group] for group in out]  # noqa: E731
    assert tokens(a) == tokens(b)
    assert tokens(a)[3:] == tokens(part)  # a resumed run reproduces the uninterrupted one
    assert len({tuple(c) for c in tokens(a)[0]}) > 1  # the n samples of a prompt differ
    other = HFEngine(model, tok, batch_size=4).generate(prompts, sampling, seeds=[s + 1 for s in seeds])
    assert tokens(other) != tokens(a)


def test_hf_stop_strings_min_tokens_and_callback(tiny):
    model, tok = tiny
    prompts = encode(tok, PROMPTS[:4])
    free = HFEngine(model, tok, batch_size=8).generate(prompts, SamplingParams(max_new_tokens=16, temperature=0))
    # a two-token stop string met after a few steps in some response
    r, stop = next((r, s) for r, g in enumerate(free) for k in range(3, len(g[0].token_ids) - 1)
                   if (s := tok.decode(g[0].token_ids[k:k + 2])).isascii() and s.isprintable()
                   and len(tok.encode(s, add_special_tokens=False)) == 2)
    out = HFEngine(model, tok).generate(prompts, SamplingParams(max_new_tokens=16, temperature=0, stop_strings=(stop,)))
    hit = out[r][0]
    assert hit.finish_reason == "stop" and tok.decode(hit.token_ids).endswith(stop)
    assert stop not in tok.decode(hit.token_ids[:-1])  # it ended at the first occurrence
    assert hit.token_ids == free[r][0].token_ids[: len(hit.token_ids)]

    done = []
    forced = HFEngine(model, tok, batch_size=2).generate(
        prompts, SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=0,
                                stop_token_ids=(tok.eos_token_id,)),
        on_complete=lambda i, group: done.append((i, len(group))))
    assert all(len(g[0].token_ids) == 10 and g[0].finish_reason == "length" for g in forced)
    assert sorted(done) == [(i, 1) for i in range(len(prompts))]


def test_sample_next_inverse_cdf_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None, :].repeat(1000, 1)  # [1000, 4]
    uniforms = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000  # an even grid over [0, 1)
    counts = torch.bincount(sample_next(logits, 1.0, 1.0, uniforms), minlength=4)
    assert counts.tolist() == [500, 300, 150, 50]
    nucleus = torch.bincount(sample_next(logits, 1.0, 0.7, uniforms), minlength=4)  # keeps 0.5 + 0.3
    assert nucleus.tolist() == [625, 375, 0, 0]
    assert sample_next(logits[:2], 0.0, 1.0, None).tolist() == [0, 0]


def _sorted_top_p_reference(logits, temperature, top_p, uniforms):
    """Nucleus sampling by sorting the whole vocabulary (the plain rule the engine must reproduce)."""
    probs, order = torch.softmax(logits / temperature, dim=-1).sort(dim=-1, descending=True)
    probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p, 0.0)
    cdf = probs.double().cumsum(dim=-1)
    pick = torch.searchsorted(cdf, uniforms[:, None] * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, pick).squeeze(-1), probs.scatter(-1, order, probs)


@pytest.mark.parametrize("first_k", [4, 64, 5000])  # widened several times, once, never (k past V)
def test_top_p_without_a_sort_is_the_sorted_rule(first_k):
    from srlm.engines import hf

    g = torch.Generator().manual_seed(0)
    # peaked rows (small nucleus) and flat rows (a nucleus of most of the vocabulary) in one batch
    logits = torch.cat([torch.randn(6, 3000, generator=g) * 6, torch.randn(6, 3000, generator=g) * 0.3])
    for top_p, temperature in ((0.95, 0.6), (0.5, 1.0), (0.999, 1.3)):
        kept, ids = hf.nucleus(torch.softmax(logits / temperature, dim=-1), top_p, k=first_k)
        _, want = _sorted_top_p_reference(logits, temperature, top_p, torch.zeros(len(logits), dtype=torch.float64))
        got = torch.zeros_like(want).scatter(-1, ids, kept)
        torch.testing.assert_close(got, want, atol=0, rtol=0)  # the same kept tokens with the same mass
        uniforms = torch.rand(len(logits), generator=g, dtype=torch.float64)
        ref_tokens, _ = _sorted_top_p_reference(logits, temperature, top_p, uniforms)
        assert torch.equal(hf.sample_next(logits, temperature, top_p, uniforms), ref_tokens)


# --------------------------------------------------------------------------------------------- openai


class FakeServer:
    """A local OpenAI-compatible completions server: canned responses that echo the request, scripted
    failures, every request body recorded. Bounded: it stops serving after `max_requests`."""

    def __init__(self, fail: list[int] | None = None, max_requests: int = 200):
        self.bodies: list[dict] = []
        self.fail = list(fail or [])  # HTTP status of the next completions requests, then 200s
        self.max_requests = max_requests
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": "tiny", "max_model_len": 4096}]})
                else:
                    self._send(404, {"error": "no such route"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    status = server.fail.pop(0) if server.fail else 200
                    if len(server.bodies) > server.max_requests:
                        status = 400
                if status != 200:
                    return self._send(status, {"error": f"scripted {status}"})
                if body.get("model") != "tiny":
                    return self._send(404, {"error": "unknown model"})
                seed = body.get("seed")
                choices = [{"index": j, "text": f"<think>{body['prompt'][-3:]}</think><answer>{seed}-{j}</answer>",
                            "finish_reason": "length" if j == 1 else "stop"} for j in range(body["n"])]
                self._send(200, {"choices": choices, "usage": {"completion_tokens": 7 * body["n"]}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def test_openai_engine_requests_and_parses(server, tiny):
    _, tok = tiny
    engine = OpenAIEngine(server.url, "tiny", tok, concurrency=4, timeout=10)
    assert engine.max_context == 4096
    prompts = encode(tok, PROMPTS[:5])
    done = []
    stops = (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
    out = engine.generate(prompts, SamplingParams(max_new_tokens=50, temperature=0.6, top_p=0.95, n=2,
                                                  stop_token_ids=stops, seed=7),
                          on_complete=lambda i, g: done.append(i))
    assert sorted(done) == list(range(5)) and len(server.bodies) == 5
    seeds = prompt_seeds(7, 5)
    for i, group in enumerate(out):  # in prompt order whatever order the replies came in
        assert [c.text for c in group] == [f"<think>{PROMPTS[i][-3:]}</think><answer>{seeds[i]}-{j}</answer>"
                                           for j in range(2)]
        assert [c.finish_reason for c in group] == ["stop", "length"]
        assert group[0].tokens_generated == len(tok.encode(group[0].text, add_special_tokens=False))  # n > 1
    body = next(b for b in server.bodies if b["seed"] == seeds[0])
    assert body["prompt"] == PROMPTS[0] and body["n"] == 2 and body["max_tokens"] == 50
    assert body["temperature"] == 0.6 and body["top_p"] == 0.95
    assert body["stop"] == ["<|im_end|>"]  # EOS is the server's own business

    one = engine.generate(prompts[:1], SamplingParams(max_new_tokens=5, temperature=0, n=1), seeds=[3])
    assert one[0][0].num_tokens == 7  # from `usage` when n == 1
    assert server.bodies[-1]["seed"] == 3


def test_openai_engine_retries_transient_errors():
    s = FakeServer(fail=[429, 500, 503])
    try:
        from srlm.tiny import build_tokenizer

        engine = OpenAIEngine(s.url, "tiny", build_tokenizer(), concurrency=1, backoff=0.01, timeout=10)
        out = engine.generate([[65, 66]], SamplingParams(max_new_tokens=4, n=1))
        assert out[0][0].text.endswith("</answer>") and len(s.bodies) == 4
        s.fail = [429] * 10
        with pytest.raises(UserError, match="cannot reach"):
            OpenAIEngine(s.url, "tiny", build_tokenizer(), max_retries=2, backoff=0.01).generate(
                [[65]], SamplingParams(max_new_tokens=4))
        s.fail = []
        with pytest.raises(UserError, match="HTTP 404"):  # not retried: the model name is wrong
            OpenAIEngine(s.url, "other", build_tokenizer(), backoff=0.01).generate([[65]], SamplingParams())
    finally:
        s.close()


def test_openai_engine_unreachable_server_is_a_user_error():
    import socket

    from srlm.tiny import build_tokenizer

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(UserError, match=f"127.0.0.1:{port}"):
        OpenAIEngine(url, "tiny", build_tokenizer(), backoff=0.01, timeout=2)


def test_engine_registry_errors():
    with pytest.raises(UserError, match="unknown engine"):
        build_engine("nope", EngineOptions(model="x"))
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"needs vLLM: pip install 'srlm\[vllm\]'"):
            build_engine("vllm", EngineOptions(model="x"))


class _FakeLLM:
    """Records what VLLMEngine.load_weights asks of vLLM's `LLM`."""

    def __init__(self):
        self.calls = []

    def collective_rpc(self, method, kwargs=None):
        self.calls.append(("collective_rpc", method, list(kwargs["weights_iterator"]), kwargs["is_checkpoint_format"]))

    def apply_model(self, fn):
        class Model:
            def load_weights(inner, weights):
                self.calls.append(("load_weights", list(weights)))
        return [fn(Model())]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.mark.parametrize("in_place", [True, False])
def test_vllm_weight_hand_over_uses_reload_weights_else_load_weights(in_place):
    from srlm.engines.vllm import VLLMEngine

    engine = object.__new__(VLLMEngine)  # no vLLM here: only the hand-over logic is under test
    engine.llm, engine.reload_in_place = _FakeLLM(), in_place
    weights = [("model.embed_tokens.weight", torch.ones(2, 2)), ("lm_head.weight", torch.zeros(2, 2))]
    engine.load_weights(iter(weights))
    first = engine.llm.calls[0]
    if in_place:
        assert first[:2] == ("collective_rpc", "reload_weights") and first[3] is True
        assert [n for n, _ in first[2]] == [n for n, _ in weights]
    else:
        assert first[0] == "load_weights" and [n for n, _ in first[1]] == [n for n, _ in weights]
    assert engine.llm.calls[-1] == ("reset_prefix_cache",)


def test_vllm_cpu_defaults_size_the_kv_cache_and_turn_chunked_prefill_off():
    from srlm.engines.vllm import engine_kwargs

    cpu = engine_kwargs(cpu=True, gpu_memory_utilization=None, kv_cache_gb=None)
    assert cpu["kv_cache_memory_bytes"] == 2 * 2**30 and cpu["enable_chunked_prefill"] is False
    assert cpu["gpu_memory_utilization"] < 0.1  # a fraction of host RAM, checked against what is free
    assert engine_kwargs(cpu=True, gpu_memory_utilization=None, kv_cache_gb=0.5)["kv_cache_memory_bytes"] == 2**29
    gpu = engine_kwargs(cpu=False, gpu_memory_utilization=None, kv_cache_gb=None)
    assert gpu == {"gpu_memory_utilization": 0.9}
    assert engine_kwargs(cpu=False, gpu_memory_utilization=0.3, kv_cache_gb=None) == {"gpu_memory_utilization": 0.3}


@pytest.mark.parametrize("override", ["eval.engine=vllm", "grpo.engine=vllm"])
def test_srlm_run_without_vllm_fails_before_any_stage(tmp_path, capsys, override):
    from pathlib import Path

    from srlm.cli import main

    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[2]
    code = main(["run", str(root / "configs" / "demo.yaml"), f"run_dir={tmp_path}", "--no-progress", override,
                 "--only", "base_rl"])
    err = capsys.readouterr().err
    assert code != 0 and "needs vLLM" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "stages").exists()  # nothing trained


def test_hf_kv_cache_budget_caps_rows_not_samples(tiny):
    """`kv_cache_gb` decodes fewer rows together (as many as the cache budget holds) and samples the same."""
    from srlm.memory import kv_bytes_per_token

    model, tok = tiny
    prompts = encode(tok, PROMPTS)
    sampling = SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.9, n=2, stop_token_ids=(tok.eos_token_id,))
    seeds = [100 + i for i in range(len(prompts))]
    columns = max(map(len, prompts)) + 2 * 8  # rows join a running batch: up to twice max_new_tokens
    per_row = columns * kv_bytes_per_token(model)
    assert per_row == columns * 2 * 2 * 2 * 16 * 4  # K and V x 2 layers x 2 kv heads x head dim 16 x fp32
    free = HFEngine(model, tok, batch_size=32)
    capped = HFEngine(model, tok, batch_size=32, kv_cache_gb=3.5 * per_row / 1024 ** 3)
    widest = []
    original = capped._forward
    capped._forward = lambda ids, *rest: widest.append(len(ids)) or original(ids, *rest)
    tokens = lambda out: [[c.token_ids for c in group] for group in out]  # noqa: E731
    assert tokens(capped.generate(prompts, sampling, seeds=seeds)) == tokens(free.generate(prompts, sampling, seeds=seeds))
    assert capped.live_rows == 3 and free.live_rows == 32
    assert max(widest) == 3  # never more rows in a forward than the budget holds
    assert HFEngine(model, tok, kv_cache_gb=1e-9).rows_for(columns) == 1  # at least one row
    line = capped.memory_estimate("eval x", [len(p) for p in prompts for _ in range(2)], 8)
    assert "3 rows x" in line and "KV cache" in line
