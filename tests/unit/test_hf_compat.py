"""The transformers compatibility layer: both `logits_to_keep` paths give the logits a full forward gives."""

import pytest
import torch

from srlm import hf_compat


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from srlm.models import load_model
    from srlm.tiny import TinySpec, write_tiny_model

    d = write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=32, layers=2, heads=4, kv_heads=2,
                                                                   intermediate=64))
    return load_model(d, torch.device("cpu"), "float32")[0]


@pytest.mark.parametrize("mask_aware", [True, False])
def test_logits_at_equals_full_forward_selection(model, monkeypatch, mask_aware):
    if mask_aware and not hf_compat.mask_logits_to_keep():
        pytest.skip("this transformers' logits_to_keep takes no 2-D mask")
    monkeypatch.setattr(hf_compat, "mask_logits_to_keep", lambda: mask_aware)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 250, (3, 9), generator=g)  # [B, T]
    keep = torch.zeros(3, 9, dtype=torch.bool)
    keep[0, 2:5], keep[1, 6:8], keep[2, 0] = True, True, True  # ragged: 3 + 2 + 1 positions
    got = hf_compat.logits_at(model, keep, input_ids=ids, use_cache=False)  # [N, V]
    want = model(input_ids=ids, use_cache=False).logits[keep]  # [N, V]
    assert got.shape == (6, want.shape[-1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cache_round_trips_through_the_installed_name(model):
    ids = torch.tensor([[7, 8, 9, 10]])
    head = model(input_ids=ids[:, :3], use_cache=True)
    cache = hf_compat.output_cache(head)
    assert cache is not None
    tail = model(input_ids=ids[:, 3:], use_cache=True, **hf_compat.cache_kwargs(cache)).logits[:, -1]
    torch.testing.assert_close(tail, model(input_ids=ids, use_cache=False).logits[:, -1], rtol=1e-5, atol=1e-5)
