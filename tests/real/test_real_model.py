"""The real model as srlm writes and reads it: a plain safetensors checkpoint, the chat template, the lean
forward against transformers on its architecture, and a save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from srlm.engines.lean import LeanForward, lean_unsupported
from srlm.models import load_model, save_model


def test_the_checkpoint_is_plain_safetensors(real_model_dir):
    config = json.loads((real_model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # dequantized: nothing downstream sees a GGUF
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152 and config["tie_word_embeddings"]
    assert not list(real_model_dir.glob("*.gguf")) and not list(real_model_dir.glob("*.bin"))


def test_chat_template_and_greedy_answer(real_model):
    model, tok = real_model
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                  tokenize=False)
    assert ids.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
    x = torch.tensor([tok.encode(ids, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=8, do_sample=False)
    assert "5" in tok.decode(out[0, x.shape[1]:])


@pytest.mark.parametrize("in_place", [True, False])  # its default (a real-sized model) and the fused copies
def test_lean_forward_equals_transformers_on_this_architecture(real_model, in_place):
    model, tok = real_model
    assert lean_unsupported(model) is None
    texts = ["Natalia sold clips to 48 of her friends.", "2 + 2 ="]
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    lean = LeanForward(model, in_place=in_place)
    assert lean.in_place == in_place
    with torch.no_grad():
        got = lean(ids, mask, pos, lean.new_cache())  # [B, V]
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_save_load_round_trip(real_model, tmp_path):
    model, tok = real_model
    out = save_model(model, tok, tmp_path / "copy")
    again, tok2 = load_model(out, torch.device("cpu"), dtype="float32")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    x = torch.tensor([tok.encode("The answer is")])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=x).logits, model(input_ids=x).logits)
    assert tok2.chat_template == tok.chat_template
