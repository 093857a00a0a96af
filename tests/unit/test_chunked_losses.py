"""The output layer run in chunks of positions gives the values and gradients of the plain functions on
full logits: token log-probs and entropies (GRPO), cross-entropy (SFT), KD losses (logit-level KD)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from srlm.train.losses import (
    chunk_rows, kd_loss, linear_cross_entropy, linear_kd_loss, linear_token_logprobs, selected_cross_entropy,
    token_entropy, token_logprobs,
)


def _head(vocab=37, dim=8, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, dim, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(vocab, generator=g, dtype=torch.float64).requires_grad_() if bias else None
    return w, b


# the chunked functions compute in float32 as the plain ones do, in another order: float32 tolerances
TOL = {"atol": 2e-6, "rtol": 2e-6}


def _grads(out, *tensors):
    return torch.autograd.grad(out, [t for t in tensors if t is not None])


# chunks that do not divide N, one chunk, one row a chunk; pieces of a chunk that do not divide it, or do
@pytest.mark.parametrize("rows,piece", [(1, None), (3, None), (7, None), (100, None), (7, 3), (4, 2), (100, 4)])
@pytest.mark.parametrize("temperature,bias", [(1.0, True), (0.7, False)])
def test_token_logprobs_and_entropy_match_full_logits(rows, piece, temperature, bias):
    w, b = _head(bias=bias)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)  # [B, T, E]
    targets = torch.randint(0, 37, (2, 5))
    targets[1, 3:] = -100  # padding positions: any value, masked later by the caller
    weights = torch.randn(2, 5, dtype=torch.float64)  # an arbitrary upstream gradient, as GRPO's loss gives
    logp, ent = linear_token_logprobs(hidden, w, b, targets, temperature, with_entropy=True, rows=rows,
                                      piece=piece)
    logits = F.linear(hidden, w, b)  # [B, T, V]
    want_logp = token_logprobs(logits, targets, temperature)
    torch.testing.assert_close(logp, want_logp.to(logp.dtype), **TOL)
    # entropy as lse - sum p z rather than -sum p log p: another rounding, still float32-close
    torch.testing.assert_close(ent, token_entropy(logits.detach(), temperature).to(ent.dtype), atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad
    got = _grads((logp * weights).sum(), hidden, w, b)
    want = _grads((want_logp * weights).sum(), hidden, w, b)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, **TOL)


def test_cross_entropy_matches_selected_cross_entropy():
    w, b = _head(vocab=50)
    hidden = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    got = linear_cross_entropy(hidden, w, b, targets, rows=4)
    want = selected_cross_entropy(F.linear(hidden, w, b), targets)
    torch.testing.assert_close(got, want.to(got.dtype), **TOL)
    for g, h in zip(_grads(got.sum(), hidden, w, b), _grads(want.sum(), hidden, w, b)):
        torch.testing.assert_close(g, h, **TOL)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
def test_kd_loss_matches_full_logits(divergence, ce_weight):
    ws, bs = _head(vocab=40, dim=8, seed=1)
    wt, bt = _head(vocab=45, dim=6, bias=False, seed=2)  # a teacher with another width and more rows
    wt.requires_grad_(False)
    hs = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(13, 6, dtype=torch.float64)
    targets = torch.randint(0, 33, (13,))
    got, got_stats = linear_kd_loss(hs, (ws, bs), ht, (wt, bt), 33, targets, divergence, 0.4, 1.5, ce_weight,
                                    normalizer=20.0, rows=5)
    want, want_stats = kd_loss(F.linear(hs, ws, bs)[:, :33], F.linear(ht, wt)[:, :33], targets, divergence, 0.4,
                               1.5, ce_weight, 20.0)
    torch.testing.assert_close(got, want, **TOL)
    assert set(got_stats) == set(want_stats)
    for k in want_stats:
        torch.testing.assert_close(got_stats[k], want_stats[k], **TOL)
    for g, h in zip(_grads(got, hs, ws, bs), _grads(want, hs, ws, bs)):
        torch.testing.assert_close(g, h, **TOL)


def test_chunk_rows_bounds_the_logits_of_a_chunk():
    assert chunk_rows(151_936) * 151_936 <= 1 << 24 and chunk_rows(49_152) == (1 << 24) // 49_152
    assert chunk_rows(10 ** 9) == 1
