"""Loss and advantage functions against naive per-token loops and hand-computed values."""

import math

import pytest
import torch

from srlm.train.losses import (
    AGGREGATIONS, group_advantages, grpo_loss, kl_k3, sft_loss, token_entropy, token_logprobs,
)


def naive_grpo(logp, old, adv, mask, ref, beta, eps_lo, eps_hi, aggregation, max_tokens):
    """The paper's objective written as plain Python loops over sequences and tokens."""
    B, T = logp.shape
    per_seq, all_tok, n_tok = [], 0.0, 0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if mask[i, t] == 0:
                continue
            r = math.exp(logp[i, t] - old[i, t])
            a = float(adv[i])
            obj = min(r * a, min(max(r, 1 - eps_lo), 1 + eps_hi) * a)
            if beta:
                d = float(ref[i, t] - logp[i, t])
                obj -= beta * (math.exp(d) - d - 1)
            s += -obj
            n += 1
        per_seq.append(s / max(n, 1))
        all_tok += s
        n_tok += n
    if aggregation == "seq_mean":
        return sum(per_seq) / B
    if aggregation == "token_mean":
        return all_tok / n_tok
    return all_tok / (B * max_tokens)


def _random_batch(seed, B=6, T=9):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    return logp, old, adv, mask, ref


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_grpo_loss_matches_naive_loop(aggregation, beta, eps_high):
    for seed in range(3):
        logp, old, adv, mask, ref = _random_batch(seed)
        loss, _ = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=beta, epsilon=0.2, epsilon_high=eps_high,
                            aggregation=aggregation, max_tokens=12)
        expected = naive_grpo(logp, old, adv, mask, ref, beta, 0.2, eps_high or 0.2, aggregation, 12)
        assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_gradient_at_ratio_one_is_policy_gradient():
    """At r = 1 and beta = 0 the GRPO gradient equals that of -mean_seq(mean_tok(A * log pi))."""
    logp, _, adv, mask, _ = _random_batch(5)
    a = logp.clone().requires_grad_(True)
    loss, _ = grpo_loss(a, a.detach(), adv, mask, beta=0.0)
    loss.backward()
    b = logp.clone().requires_grad_(True)
    ref_loss = -(((adv[:, None] * b) * mask).sum(-1) / mask.sum(-1)).mean()
    ref_loss.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batches_add_up_to_the_batch(aggregation):
    logp, old, adv, mask, ref = _random_batch(7, B=8)
    full, _ = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, aggregation=aggregation, max_tokens=9)
    parts = 0.0
    for sl in (slice(0, 3), slice(3, 5), slice(5, 8)):
        part, _ = grpo_loss(logp[sl], old[sl], adv[sl], mask[sl], ref_logp=ref[sl], beta=0.04,
                            aggregation=aggregation, max_tokens=9, n_seqs=8, n_tokens=float(mask.sum()))
        parts += part.item()
    assert parts == pytest.approx(full.item(), rel=1e-12)


def test_clip_fraction_and_kl_stats():
    logp = torch.zeros(1, 2, dtype=torch.float64)
    old = torch.tensor([[0.0, -1.0]], dtype=torch.float64)  # ratios 1 and e
    adv = torch.tensor([1.0], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss, st = grpo_loss(logp, old, adv, mask, ref_logp=logp, beta=0.1, epsilon=0.2)
    # token 1: min(1*1, 1*1) = 1 ; token 2: min(e, 1.2) = 1.2 (clipped); KL = 0
    assert loss.item() == pytest.approx(-(1.0 + 1.2) / 2)
    assert st["clip_fraction"].item() == pytest.approx(0.5)
    assert st["kl"].item() == pytest.approx(0.0)


def test_kl_k3_hand_values():
    logp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([0.0, 0.0])
    # d = ref - logp = [0, 1]: exp(1) - 1 - 1
    assert torch.allclose(kl_k3(logp, ref), torch.tensor([0.0, math.e - 2.0]))
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=2, eps=0.0)
    s = math.sqrt(2.0)  # sample std of (1, 3)
    assert torch.allclose(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]))
    assert torch.allclose(group_advantages(r, 2, scale=False), torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_equal_rewards_give_zero_advantages():
    assert torch.equal(group_advantages(torch.full((8,), 2.0), 4), torch.zeros(8))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 2)


def test_leave_one_out_advantages_hand_computed_and_against_a_naive_loop():
    from srlm.train.losses import ADVANTAGE_ESTIMATORS, leave_one_out_advantages

    assert ADVANTAGE_ESTIMATORS["grpo"] is group_advantages  # the default keeps today's estimator
    r = torch.tensor([1.0, 2.0, 6.0, 3.0, 3.0, 3.0])
    # group (1, 2, 6): 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; group (3, 3, 3): zeros
    assert torch.allclose(leave_one_out_advantages(r, 3, scale=False), torch.tensor([-3.0, -1.5, 4.5, 0, 0, 0]))
    s = torch.tensor([1.0, 2.0, 6.0]).std()
    assert torch.allclose(leave_one_out_advantages(r, 3, eps=0.0), torch.tensor([-3 / s, -1.5 / s, 4.5 / s, 0, 0, 0]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * 5, generator=g)
    naive = torch.tensor([x[i] - (x[i // 5 * 5:i // 5 * 5 + 5].sum() - x[i]) / 4 for i in range(20)])
    assert torch.allclose(leave_one_out_advantages(x, 5, scale=False), naive, atol=1e-6)
    with pytest.raises(ValueError):
        leave_one_out_advantages(torch.ones(4), 1)


def test_token_logprobs_and_entropy_match_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets, temperature=0.7), ref, atol=1e-6)
    p = torch.softmax(logits, -1)
    assert torch.allclose(token_entropy(logits), -(p * p.log()).sum(-1), atol=1e-5)


def test_sft_loss_masks_prompt_and_normalises():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4], [-100, 1, 2, -100]])
    naive, n = 0.0, 0
    for b in range(2):
        for t in range(3):
            y = labels[b, t + 1].item()
            if y != -100:
                naive += -torch.log_softmax(logits[b, t], -1)[y].item()
                n += 1
    assert sft_loss(logits, labels).item() == pytest.approx(naive / n, rel=1e-5)
    assert sft_loss(logits, labels, normalizer=10).item() == pytest.approx(naive / 10, rel=1e-5)


def naive_tis_grpo(logp, old, eng, adv, mask, ref, beta, cap):
    """seq_mean GRPO with truncated importance sampling, as plain loops: each token's clipped term times
    min(pi_old / pi_engine, cap); the KL penalty unweighted."""
    B, T = logp.shape
    total = 0.0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if mask[i, t] == 0:
                continue
            r = math.exp(logp[i, t] - old[i, t])
            a = float(adv[i])
            w = min(math.exp(old[i, t] - eng[i, t]), cap)
            obj = w * min(r * a, min(max(r, 0.8), 1.2) * a)
            d = float(ref[i, t] - logp[i, t])
            obj -= beta * (math.exp(d) - d - 1)
            s += -obj
            n += 1
        total += s / max(n, 1)
    return total / B


@pytest.mark.parametrize("cap", [0.5, 1.0, 2.0, 1e9])
def test_truncated_importance_sampling_matches_naive_loop(cap):
    for seed in range(3):
        logp, old, adv, mask, ref = _random_batch(seed)
        eng = old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed + 10), dtype=old.dtype)
        loss, st = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, engine_logp=eng, tis_cap=cap)
        assert loss.item() == pytest.approx(naive_tis_grpo(logp, old, eng, adv, mask, ref, 0.04, cap), rel=1e-10)
        w = torch.exp(old - eng).clamp(max=cap)
        assert st["tis_weight"].item() == pytest.approx(((w * mask).sum() / mask.sum()).item(), rel=1e-10)


def test_truncated_importance_sampling_hand_values_and_gradient():
    # one token: ratio 1 (logp = old), advantage 2, pi_old / pi_engine = e^0.5 ~ 1.6487, cap 1.5 -> weight 1.5
    logp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    old, eng = torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), -0.5, dtype=torch.float64)
    mask, adv = torch.ones(1, 1, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    loss, st = grpo_loss(logp, old, adv, mask, engine_logp=eng, tis_cap=1.5)
    assert loss.item() == pytest.approx(-3.0) and st["tis_weight"].item() == pytest.approx(1.5)
    loss.backward()
    assert logp.grad.item() == pytest.approx(-3.0)  # d/dlogp of -w * r * A at r = 1; no gradient through w
    plain, _ = grpo_loss(torch.zeros(1, 1, dtype=torch.float64), old, adv, mask, engine_logp=eng, tis_cap=1.6)
    assert plain.item() == pytest.approx(-3.2)
    off, st_off = grpo_loss(torch.zeros(1, 1, dtype=torch.float64), old, adv, mask, engine_logp=eng)
    assert off.item() == pytest.approx(-2.0) and "tis_weight" not in st_off  # off by default
    with pytest.raises(ValueError, match="engine_logp"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), tis_cap=2.0)


def test_rollout_mismatch_hand_values():
    from srlm.train.losses import rollout_mismatch

    old = torch.tensor([[-1.0, -2.0, -3.0]])
    eng = torch.tensor([[-1.5, -2.0, -9.0]])  # the last token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    m = rollout_mismatch(old, eng, mask)
    assert m["abs_logp_diff"].item() == pytest.approx(0.5)
    d = 0.5  # old - eng at the first token; k3 = e^d - d - 1, 0 at the second
    assert m["kl"].item() == pytest.approx(math.exp(d) - d - 1)
