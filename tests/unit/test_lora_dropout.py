"""LoRA dropout without the dropped-out copies: the seeded A projection against plain dropout with the same
mask (outputs and gradients), and a LoRA model whose autograd graph keeps no more with dropout than without."""

import pytest
import torch

from srlm.config import LoraConfig
from srlm.models import SeededDropoutLinear, _SeededDropoutProjection, apply_lora, dropout_keep_mask


def test_seeded_projection_equals_plain_dropout_with_the_same_mask():
    torch.manual_seed(0)
    p, seed = 0.3, 1234
    x = torch.randn(3, 5, 8, requires_grad=True)
    w = torch.randn(4, 8, requires_grad=True)
    upstream = torch.randn(3, 5, 4)
    out = _SeededDropoutProjection.apply(x, w, p, seed)
    out.backward(upstream)

    keep = dropout_keep_mask(x, p, seed)
    assert 0 < (~keep).sum() < keep.numel()  # some inputs dropped, not all
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = torch.nn.functional.linear(x_ref * keep / (1 - p), w_ref)  # what autograd would keep a copy for
    ref.backward(upstream)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-6, atol=1e-6)


def test_keep_mask_depends_on_the_seed_only():
    x = torch.zeros(64, 32)
    assert torch.equal(dropout_keep_mask(x, 0.5, 7), dropout_keep_mask(x, 0.5, 7))
    assert not torch.equal(dropout_keep_mask(x, 0.5, 7), dropout_keep_mask(x, 0.5, 8))
    assert abs((~dropout_keep_mask(x, 0.25, 7)).float().mean().item() - 0.25) < 0.05


def _lora_model(dropout: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = apply_lora(LlamaForCausalLM(cfg), LoraConfig(enabled=True, r=4, alpha=8, dropout=dropout))
    for name, prm in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(prm, std=0.1)  # peft starts B at zero: make the adapters count
    return model


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct activation storages autograd keeps for backward over one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids).logits.sum()
    return sum(seen.values())


def test_lora_dropout_keeps_no_copy_of_the_adapted_inputs():
    ids = torch.randint(0, 64, (2, 24))
    with_dropout, without = _lora_model(0.3).train(), _lora_model(0.0).train()
    assert not any(isinstance(m, torch.nn.Dropout) for m in with_dropout.modules())
    assert sum(isinstance(m, SeededDropoutLinear) for m in with_dropout.modules()) == 2 * 7
    assert _saved_bytes(with_dropout, ids) == _saved_bytes(without, ids)


def test_lora_dropout_is_on_in_training_repeats_with_the_seed_and_off_in_eval():
    ids = torch.randint(0, 64, (2, 24))
    model, plain = _lora_model(0.3), _lora_model(0.0)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(model.train()(input_ids=ids).logits)
    assert torch.equal(outs[0], outs[1])
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, plain.eval()(input_ids=ids).logits)
        assert not torch.allclose(outs[0], plain(input_ids=ids).logits)
    outs[0].sum().backward()  # and trains: every adapter gets a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_saved_adapter_keys_do_not_change(dropout):
    keys = set(_lora_model(dropout).state_dict())
    assert keys == set(_lora_model(0.0).state_dict())
