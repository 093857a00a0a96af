"""The vllm engine on a GPU: greedy outputs agree with the hf engine, seeded sampling is reproducible.
Skipped (cleanly) without CUDA or without vLLM installed (`pip install 'srlm[vllm]'`)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("vllm")

from srlm.engines.base import SamplingParams  # noqa: E402
from srlm.engines.hf import HFEngine  # noqa: E402
from srlm.engines.vllm import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from srlm.tiny import TinySpec, write_tiny_model

    # vLLM needs head_dim in its supported set (64 here) and a context it can page.
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=256, layers=2, heads=4, kv_heads=2,
                                                                      intermediate=512, max_positions=1024))


@pytest.fixture(scope="module")
def engine(tiny):
    return VLLMEngine(str(tiny), dtype="float32", gpu_memory_utilization=0.3, max_model_len=1024, enforce_eager=True)


def prompts(tok):
    return [tok.encode(t, add_special_tokens=False) for t in ("What is 2+2?", "x", "A longer prompt about trains.")]


def test_vllm_greedy_matches_hf(tiny, engine):
    from srlm.models import load_model

    model, tok = load_model(tiny, torch.device("cuda"), dtype="float32")
    sampling = SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=(tok.eos_token_id,))
    want = HFEngine(model, tok).generate(prompts(tok), sampling)
    got = engine.generate(prompts(tok), sampling)
    assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
    assert engine.max_context == 1024


def test_vllm_seeded_sampling_is_reproducible_and_streams(tiny, engine):
    from srlm.models import load_tokenizer

    tok = load_tokenizer(tiny)
    sampling = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.95, n=3)
    done = []
    a = engine.generate(prompts(tok), sampling, seeds=[1, 2, 3], on_complete=lambda i, g: done.append(i))
    b = engine.generate(prompts(tok)[1:], sampling, seeds=[2, 3])
    assert sorted(done) == [0, 1, 2]
    assert [[c.token_ids for c in g] for g in a[1:]] == [[c.token_ids for c in g] for g in b]
    assert all(len(g) == 3 for g in a)


def test_vllm_serves_pushed_weights(tiny, tmp_path_factory):
    """After `load_weights` with another model's weights, greedy outputs are that model's (as in GRPO)."""
    from srlm.models import hf_weights, load_model
    from srlm.tiny import TinySpec, write_tiny_model

    other_dir = write_tiny_model(tmp_path_factory.mktemp("other"), TinySpec(hidden=256, layers=2, heads=4, kv_heads=2,
                                                                              intermediate=512, seed=7))
    other, tok = load_model(other_dir, torch.device("cuda"), dtype="float32")
    engine = VLLMEngine(str(tiny), dtype="float32", gpu_memory_utilization=0.2, max_model_len=1024,
                        enforce_eager=True, in_process=True)
    sampling = SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=(tok.eos_token_id,))
    with torch.no_grad(), hf_weights(other) as weights:
        engine.load_weights(weights)
    want = HFEngine(other, tok).generate(prompts(tok), sampling)
    got = engine.generate(prompts(tok), sampling)
    assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
