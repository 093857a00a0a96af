"""srlm's CPU attention for short keys computes what transformers' sdpa attention computes."""

from __future__ import annotations

import json

import pytest
import torch

from srlm.train import attention
from srlm.train.attention import short_key_attention, use_short_key_attention


class _Module(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def _inputs(b=3, h=4, hkv=2, s=5, w=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, m, d, generator=g, requires_grad=True) for n, m in ((h, s), (hkv, w), (hkv, w)))
    return q, k, v


def _padded_causal(b, s, w, pads):
    """bool [B, 1, S, W]: query i (at column w - s + i) sees columns <= its own that are not left padding."""
    allowed = torch.arange(w)[None, :] <= torch.arange(w - s, w)[:, None]  # [S, W]
    keys = torch.ones(b, w, dtype=torch.bool)
    for row, n in enumerate(pads):
        keys[row, :n] = False
    return allowed[None, None] & keys[:, None, None, :]


@pytest.mark.parametrize("case", ["padded_bool", "additive", "causal_none", "decode_none", "no_mask"])
def test_short_key_attention_equals_sdpa_values_and_gradients(case):
    s, w = (1, 9) if case == "decode_none" else (5, 5) if case == "causal_none" else (5, 9)
    mask, is_causal = None, None
    if case == "padded_bool":
        mask = _padded_causal(3, s, w, [0, 3, 1])
    elif case == "additive":
        mask = torch.zeros(3, 1, s, w).masked_fill(~_padded_causal(3, s, w, [2, 0, 0]), torch.finfo(torch.float32).min)
    elif case == "no_mask":
        is_causal = False
    outs = []
    for fn in (short_key_attention, _sdpa):
        q, k, v = _inputs(s=s, w=w)
        out, _ = fn(_Module(), q, k, v, mask, scaling=0.3, is_causal=is_causal)  # [B, S, H, D]
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append((out.detach(), q.grad, k.grad, v.grad))
    assert outs[0][0].shape == (3, s, 4, 8)
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_query_that_may_attend_nowhere_stays_finite():
    q, k, v = _inputs(s=4, w=4)
    mask = _padded_causal(3, 4, 4, [2, 0, 0])  # row 0's first two queries are padding: they see nothing
    out, _ = short_key_attention(_Module(), q, k, v, mask, scaling=0.3)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_long_keys_go_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr("transformers.integrations.sdpa_attention.sdpa_attention_forward",
                        lambda *a, **k: calls.append(1) or ("sdpa", None))
    q, k, v = _inputs(s=3, w=attention.MAX_KEYS + 1)
    assert short_key_attention(_Module(), q, k, v, None)[0] == "sdpa" and calls == [1]


def test_switching_a_model_keeps_its_outputs_and_is_not_saved(tmp_path):
    import transformers

    from srlm.models import save_model

    cfg = transformers.Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    ids = torch.randint(0, 40, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    before = model(input_ids=ids, attention_mask=mask).logits
    assert use_short_key_attention(model)
    assert model.config._attn_implementation == attention.NAME
    after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after[mask.bool()], before[mask.bool()], atol=1e-5, rtol=1e-5)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_tiny_tokenizer(), eos_token="e")
    save_model(model, tok, tmp_path / "ck")
    assert attention.NAME not in (tmp_path / "ck" / "config.json").read_text()
    assert json.loads((tmp_path / "ck" / "config.json").read_text()).get("model_type") == "qwen2"


def test_models_without_sdpa_are_left_alone():
    import transformers

    cfg = transformers.Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    assert not use_short_key_attention(model) and model.config._attn_implementation == "eager"


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"e": 0, "a": 1}, unk_token="a"))
