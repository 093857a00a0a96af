"""The lean decode forward computes what the transformers forward computes, for each architecture it takes."""

from __future__ import annotations

import pytest
import torch

from srlm.engines import lean as lean_module
from srlm.engines.lean import LeanForward, LeanLayerCache, lean_unsupported
from srlm.hf_compat import cache_kwargs


def _model(kind: str, **extra):
    import transformers

    config_cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
                  "qwen3": transformers.Qwen3Config, "mistral": transformers.MistralConfig}[kind]
    cfg = config_cls(**{**dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                tie_word_embeddings=kind != "llama"), **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # large weights, so that mistakes show in the logits
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _left_padded(batch: int, width: int, pads: list[int]):
    ids = torch.randint(3, 50, (batch, width), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, width, dtype=torch.long)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


# MKL's pre-packed products (where available), plain products on fused copies, or the model's own weights
@pytest.mark.parametrize("weights", ["packed", "fused", "in_place"])
@pytest.mark.parametrize("kind,extra", [("qwen2", {}), ("llama", {"attention_bias": True}), ("llama", {}),
                                        ("qwen3", {}), ("mistral", {"sliding_window": None})])
def test_lean_prefill_and_decode_logits_equal_transformers(kind, extra, weights, monkeypatch):
    monkeypatch.setattr(lean_module, "MKL_PACKING", weights == "packed" and lean_module.MKL_PACKING)
    model = _model(kind, **extra)
    assert lean_unsupported(model) is None
    lean = LeanForward(model, in_place=weights == "in_place")
    ids, mask, pos = _left_padded(3, 9, [0, 4, 2])
    cache = lean.new_cache()
    with torch.no_grad():
        got = lean(ids, mask, pos, cache)  # [B, V]
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # three decode steps on the cache, against the full sequence each time
        for _ in range(3):
            nxt = got.argmax(-1, keepdim=True)  # [B, 1]
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            got = lean(nxt, mask, pos[:, -1:], cache)
            want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lean_reads_the_current_weights():
    model = _model("qwen2")
    ids, mask, pos = _left_padded(2, 5, [0, 1])
    lean = LeanForward(model)
    before = lean(ids, mask, pos, lean.new_cache())
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2)
    lean = LeanForward(model)  # built after the change: it decodes the weights as they are now
    after = lean(ids, mask, pos, lean.new_cache())
    want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want.detach(), atol=1e-5, rtol=1e-5)


def test_lean_declines_what_it_does_not_compute():
    assert "sliding" in lean_unsupported(_model("mistral", sliding_window=16))
    assert "activation" in lean_unsupported(_model("llama", hidden_act="gelu"))
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_model("qwen2"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert lean_unsupported(peft_model) is not None
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    assert "gpt2" in lean_unsupported(gpt2)


def test_lean_layer_cache_appends_in_place_and_grows():
    cache = LeanLayerCache()
    chunks = [torch.randn(2, 1, n, 4) for n in (5, 1, 1, 70, 1)]
    for c in chunks:
        keys, values = cache.append(c, -c)
    full = torch.cat(chunks, dim=2)
    assert torch.equal(keys, full) and torch.equal(values, -full) and cache.width == 78
    cache.keys, cache.values = full[:, :, 3:], -full[:, :, 3:]  # the engine trims leading columns like this
    keys, _ = cache.append(chunks[1], chunks[1])
    assert torch.equal(keys, torch.cat([full[:, :, 3:], chunks[1]], dim=2))


def test_lean_packs_for_the_decode_row_count_and_repacks_when_it_changes():
    """Packed weights serve calls with the row count they were packed for; a batch that lost rows is
    re-packed at once; prefill takes the plain product, recomputed from the model (the fused weights are
    kept only packed). The logits never change."""
    if not lean_module.MKL_PACKING:
        pytest.skip("this torch build has no MKL packed products")
    model = _model("qwen2")
    lean = LeanForward(model)
    ids, mask, pos = _left_padded(4, 6, [0, 2, 1, 0])
    cache = lean.new_cache()
    with torch.no_grad():
        got = lean(ids, mask, pos, cache)
        assert lean.lm_head.packed is None  # prefill rows are not a decode batch
        packed_rows = []
        for step in range(8):
            if step == 2:  # two rows leave the batch
                keep = torch.tensor([0, 2])
                cache.batch_select_indices(keep)
                ids, mask, pos, got = ids[keep], mask[keep], pos[keep], got[keep]
            nxt = got.argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            got = lean(nxt, mask, pos[:, -1:], cache)
            packed_rows.append(lean.lm_head.packed_rows)
            want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert packed_rows == [4, 4, 2, 2, 2, 2, 2, 2]  # re-packed for 2 rows at the first step with 2 rows
    assert all(p.packed_rows == 2 for p in lean.projections)
    # one copy of each weight: the fused ones only packed, the model's own (o, down) plain + packed
    layer = lean.layers[0]
    assert lean.lm_head.weight is None and layer["qkv"].weight is None and layer["gate_up"].weight is None
    assert layer["o"].weight.data_ptr() == model.model.layers[0].self_attn.o_proj.weight.data_ptr()


# ----------------------------------------------------------------------------- lean training forward


def _rollout_batch(uniform: bool):
    """Prompts of different lengths (left padding), completions of different lengths (right padding)."""
    from srlm.engines.base import Completion
    from srlm.train.rollout_batch import pad_rollouts

    g = torch.Generator().manual_seed(0)
    seqs = []
    for n_prompt in (7, 12, 9):
        prompt = torch.randint(3, 50, (n_prompt,), generator=g).tolist()
        for n in (2, 6, 11):
            seqs.append((prompt, Completion(torch.randint(3, 50, (n,), generator=g).tolist(), "", "stop")))
    return pad_rollouts(seqs if uniform else seqs[:-1], pad_id=0)  # without the last: unequal groups


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("kind,extra", [("qwen2", {}), ("llama", {"attention_bias": True}), ("llama", {}),
                                        ("qwen3", {}), ("mistral", {"sliding_window": None})])
def test_lean_training_logprobs_and_gradients_equal_transformers(kind, extra, uniform):
    from srlm.train.lean_forward import lean_training_unsupported
    from srlm.train.rollout_batch import completion_logprobs

    model = _model(kind, **extra).train()
    with torch.no_grad():  # moderate weights: large ones saturate the softmax and hide gradient errors
        for p in model.parameters():
            p.mul_(0.3)
    assert lean_training_unsupported(model) is None
    batch = _rollout_batch(uniform)
    weights = torch.randn(batch.loss_mask.shape, generator=torch.Generator().manual_seed(2))

    def run(lean: bool):
        model.zero_grad()
        logp, ent = completion_logprobs(model, batch, temperature=0.7, with_entropy=True, lean=lean)
        (logp * weights * batch.loss_mask).sum().backward()
        return logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}

    want_logp, want_ent, want_grads = run(lean=False)
    got_logp, got_ent, got_grads = run(lean=True)
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(got_logp[mask], want_logp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_ent[mask], want_ent[mask], atol=1e-5, rtol=1e-5)
    for name, want in want_grads.items():
        assert want.abs().max() > 0, name  # every parameter is exercised
        torch.testing.assert_close(got_grads[name], want, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_lean_training_under_bf16_autocast_stays_near_transformers_under_it(kind):
    """Under bf16 autocast both forwards run their products in bf16, each rounding in its own places: the
    log-probs agree to bf16 precision and the gradients point the same way."""
    from srlm.train.rollout_batch import completion_logprobs

    model = _model(kind).train()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
    batch = _rollout_batch(uniform=True)
    weights = torch.randn(batch.loss_mask.shape, generator=torch.Generator().manual_seed(2))

    def run(lean: bool, use_bf16: bool):
        model.zero_grad()
        logp, _ = completion_logprobs(model, batch, temperature=0.7, use_bf16=use_bf16, lean=lean)
        (logp * weights * batch.loss_mask).sum().backward()
        return logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    exact_logp, _ = run(lean=False, use_bf16=False)
    want_logp, want_grad = run(lean=False, use_bf16=True)
    got_logp, got_grad = run(lean=True, use_bf16=True)
    mask = batch.loss_mask.bool()
    assert not torch.equal(got_logp[mask], exact_logp[mask])  # bf16 really ran
    torch.testing.assert_close(got_logp[mask], want_logp[mask], atol=0.05, rtol=0.02)
    assert (got_grad - want_grad).norm() / want_grad.norm() < 0.05


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("kind", ["qwen2", "llama"])  # tied and untied output layers
def test_a_bf16_frozen_reference_computes_what_autocast_computes_from_fp32(kind, lean):
    """GRPO's reference under bf16 autocast keeps its linear weights in bf16 (`grpo.frozen_reference`):
    the same log-probs as the fp32 copy under autocast, which casts those weights to bf16 in every pass."""
    from srlm.train.grpo import frozen_reference
    from srlm.train.rollout_batch import completion_logprobs

    model = _model(kind)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
    fp32_ref, bf16_ref = frozen_reference(model), frozen_reference(model, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in bf16_ref.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == dtypes["model.layers.1.mlp.down_proj.weight"] \
        == torch.bfloat16
    assert dtypes["model.embed_tokens.weight"] == dtypes["model.norm.weight"] == torch.float32
    assert dtypes.get("lm_head.weight", torch.float32) == (torch.bfloat16 if kind == "llama" else torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the policy is untouched
    from srlm.train.lean_forward import lean_training_unsupported
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the lean forward takes it under autocast only
        assert lean_training_unsupported(bf16_ref) is None
    assert "float32" in lean_training_unsupported(bf16_ref)
    batch = _rollout_batch(uniform=True)
    with torch.no_grad():
        want, _ = completion_logprobs(fp32_ref, batch, temperature=0.7, use_bf16=True, lean=lean)
        got, _ = completion_logprobs(bf16_ref, batch, temperature=0.7, use_bf16=True, lean=lean)
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-6, rtol=1e-6)


def test_lean_training_declines_what_it_does_not_compute():
    from srlm.train.lean_forward import lean_training_unsupported

    assert "dropout" in lean_training_unsupported(_model("qwen2", attention_dropout=0.1).train())
    assert "float32" in lean_training_unsupported(_model("qwen2").to(torch.bfloat16))
    assert lean_training_unsupported(_model("mistral", sliding_window=16)) is not None


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_lean_decodes_a_half_precision_model_like_transformers(kind, dtype, in_place):
    """Half-precision weights: the RMSNorm statistic and the rotation run in fp32 as in transformers (in
    fp16 the sum of squares of these activations, norm about 500, would overflow)."""
    model = _model(kind, tie_word_embeddings=False)
    with torch.no_grad():  # moderate weights: half-precision rounding of large logits would hide errors
        for p in model.parameters():
            p.mul_(0.5)
        model.model.embed_tokens.weight.mul_(600)  # RMSNorm takes the scale out again
    model = model.to(dtype)
    lean = LeanForward(model, in_place=in_place)
    # the model's own projections are read in place, not copied (F.linear on the weight as it is)
    layer, attn = lean.layers[0], model.model.layers[0].self_attn
    assert layer["o"].weight.data_ptr() == attn.o_proj.weight.data_ptr()
    assert layer["down"].weight.data_ptr() == model.model.layers[0].mlp.down_proj.weight.data_ptr()
    if in_place:  # and so are all the others
        assert layer["q"].weight.data_ptr() == attn.q_proj.weight.data_ptr()
        assert lean.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()
    ids, mask, pos = _left_padded(3, 9, [0, 4, 2])
    cache = lean.new_cache()
    with torch.no_grad():
        got = lean(ids, mask, pos, cache)
        assert got.dtype == dtype
        for _ in range(3):
            want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.05)
            nxt = want.argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            got = lean(nxt, mask, pos[:, -1:], cache)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3"])
def test_a_float32_model_decoded_in_bf16_is_that_model_in_bf16(kind):
    """`LeanForward(model, torch.bfloat16)` computes in bf16 from copies of a float32 model's weights (GRPO's
    rollouts under bf16_autocast): what the model converted to bf16 computes, and the model is untouched."""
    model = _model(kind, tie_word_embeddings=False, **({"attention_bias": True} if kind == "llama" else {}))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
        model.model.embed_tokens.weight.mul_(600)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lean = LeanForward(model, torch.bfloat16)
    half = LeanForward(_bf16_copy(model))
    ids, mask, pos = _left_padded(3, 9, [0, 4, 2])
    cache, half_cache = lean.new_cache(), half.new_cache()
    with torch.no_grad():
        got, want = lean(ids, mask, pos, cache), half(ids, mask, pos, half_cache)
        for _ in range(3):
            assert got.dtype == torch.bfloat16 and cache.layers[0].keys.dtype == torch.bfloat16
            # the norm weights fold into the projections before rounding here, after it there: a few bf16 ulps
            torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0.02)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            nxt = want.argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            got, want = lean(nxt, mask, pos[:, -1:], cache), half(nxt, mask, pos[:, -1:], half_cache)
    assert all(torch.equal(v, model.state_dict()[k]) and v.dtype == torch.float32 for k, v in before.items())


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def test_lean_follows_a_position_dependent_rotary_scaling():
    """Dynamic NTK scaling recomputes the angles from the positions: the lean forward asks the model's
    rotary embedding every time instead of tabulating, and decodes as transformers does with its own
    cache (whose keys keep the angles they were computed with)."""
    import copy

    from transformers import DynamicCache

    model = _model("llama", max_position_embeddings=8,
                   rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    lean = LeanForward(copy.deepcopy(model))  # the rotary embedding keeps state: one copy each
    assert not lean._static_rope
    ids, mask, pos = _left_padded(2, 12, [0, 3])  # past max_position_embeddings: the scaling kicks in
    cache, hf_cache = lean.new_cache(), DynamicCache()
    with torch.no_grad():
        got = lean(ids, mask, pos, cache)
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kwargs(hf_cache)).logits[:, -1]
        for _ in range(3):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            nxt = got.argmax(-1, keepdim=True)
            mask, pos = torch.cat([mask, torch.ones_like(nxt)], 1), pos[:, -1:] + 1
            got = lean(nxt, mask, pos, cache)
            want = model(input_ids=nxt, attention_mask=mask, position_ids=pos, **cache_kwargs(hf_cache)).logits[:, -1]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cache_is_sized_from_the_request_not_doubled():
    layer = LeanLayerCache(reserve=10)
    k = torch.randn(2, 1, 7, 4)  # a 7-token prefill
    layer.append(k, k)
    buffer = layer._k
    assert buffer.shape[2] == 7 + 10  # the prompt and every token the request may add, nothing more
    for _ in range(10):
        step = torch.randn(2, 1, 1, 4)
        keys, _ = layer.append(step, step)
    assert layer._k is buffer and keys.shape[2] == 17  # filled in place: never re-allocated
    torch.testing.assert_close(keys[:, :, :7], k)
    unsized = LeanLayerCache()
    unsized.append(k, k)
    assert unsized._k.shape[2] == 7 + 64  # without a request size: the doubling rule


def test_engine_reserves_the_requests_new_tokens(monkeypatch):
    from srlm.engines.base import SamplingParams
    from srlm.engines.hf import HFEngine

    model = _model("qwen2")
    reserves = []
    real = LeanForward.new_cache

    def recording(self, reserve=None):
        reserves.append(reserve)
        return real(self, reserve)

    monkeypatch.setattr(LeanForward, "new_cache", recording)

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def decode(self, ids, skip_special_tokens=True):
            return ""

    engine = HFEngine(model, Tok(), batch_size=4)
    out = engine.generate([[5, 6, 7], [8, 9]], SamplingParams(max_new_tokens=6, temperature=0.0, n=2))
    assert reserves and set(reserves) == {6}
    assert all(len(c.token_ids) == 6 for group in out for c in group)


@pytest.mark.parametrize("packing", [True, False])
def test_a_prefill_of_many_rows_runs_in_row_chunks_into_one_cache(packing, monkeypatch):
    """More rows than PREFILL_ROWS: the prefill runs a chunk of rows at a time, each writing its rows of one
    cache allocated up front; logits, cache and the decode steps after it are those of one whole prefill."""
    monkeypatch.setattr(lean_module, "MKL_PACKING", packing and lean_module.MKL_PACKING)
    model = _model("qwen2")
    ids, mask, pos = _left_padded(5, 7, [0, 3, 1, 6, 2])
    results = []
    for rows in (100, 2):  # one prefill; chunks of 2, 2 and 1 rows
        monkeypatch.setattr(lean_module, "PREFILL_ROWS", rows)
        lean = LeanForward(model)
        cache = lean.new_cache(reserve=4)
        with torch.no_grad():
            logits = [lean(ids, mask, pos, cache)]
            assert cache.layers[0].width == 7 and cache.layers[0]._k.shape[0] == 5
            step_ids, step_mask = ids, mask
            for i in range(3):
                nxt = logits[-1].argmax(-1, keepdim=True)
                step_mask = torch.cat([step_mask, torch.ones_like(nxt)], 1)
                logits.append(lean(nxt, step_mask, pos[:, -1:] + 1 + i, cache))
        results.append((logits, [layer.keys.clone() for layer in cache.layers]))
    (whole, whole_keys), (chunked, chunked_keys) = results
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for a, b in zip(whole_keys, chunked_keys):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    torch.testing.assert_close(chunked[0], want, atol=1e-5, rtol=1e-5)


def test_an_engine_decoding_in_bf16_counts_its_cache_and_weight_copies_in_bf16():
    """Sampling a float32 model in bf16 (`compute_dtype`): the KV budget holds twice the rows of float32 ones,
    and the lean forward's copies are every weight in bf16."""
    from types import SimpleNamespace

    from srlm.engines.hf import HFEngine
    from srlm.engines.lean import lean_copy_bytes

    model = _model("qwen2")
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    kv_per_token = 2 * 2 * 2 * 8 * 4  # layers x (K, V) x kv heads x head dim x fp32 bytes
    budget = 1000 * 100 * kv_per_token / 1024 ** 3  # 1000 fp32 rows of 100 tokens
    fp32 = HFEngine(model, tok, batch_size=10_000, kv_cache_gb=budget)
    bf16 = HFEngine(model, tok, batch_size=10_000, kv_cache_gb=budget, compute_dtype=torch.bfloat16)
    assert fp32.rows_for(100) == 1000 and bf16.rows_for(100) == 2000
    inner = model.model
    weights = inner.embed_tokens.weight.numel() + model.lm_head.weight.numel() + sum(
        m.weight.numel() for layer in inner.layers
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                  layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj))
    assert lean_copy_bytes(model, torch.bfloat16) == 2 * weights
    assert lean_copy_bytes(model, torch.float32) == lean_copy_bytes(model)
