"""Logit-level distillation losses against naive per-token loops, plus their defining properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from srlm.train.losses import KD_DIVERGENCES, kd_divergence, kd_loss, selected_cross_entropy


def _probs(logits, t=1.0):
    return [F.softmax(row / t, dim=-1).tolist() for row in logits]


def naive_divergence(student, teacher, kind, beta=0.5, t=1.0):
    """One position at a time, one vocabulary entry at a time, straight from the definitions."""
    out = []
    for q, p in zip(_probs(student, t), _probs(teacher, t)):
        def kl(a, b):
            return sum(ai * (math.log(ai) - math.log(bi)) for ai, bi in zip(a, b) if ai > 0)

        if kind == "forward_kl":
            d = kl(p, q)
        elif kind == "reverse_kl":
            d = kl(q, p)
        else:
            m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
            d = beta * kl(p, m) + (1 - beta) * kl(q, m)
        out.append(d * t * t)
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 11, generator=g) * 2, torch.randn(6, 11, generator=g) * 2  # student, teacher [N, V]


@pytest.mark.parametrize("kind", sorted(KD_DIVERGENCES))
def test_zero_when_teacher_equals_student(kind, logits):
    s, _ = logits
    d = kd_divergence(s, s.clone(), kind, beta=0.3, temperature=1.7)
    assert torch.allclose(d, torch.zeros_like(d), atol=1e-6)
    loss, stats = kd_loss(s, s.clone(), divergence=kind)
    assert abs(loss.item()) < 1e-6 and abs(stats["kd"].item()) < 1e-6


@pytest.mark.parametrize("kind,beta,t", [("forward_kl", 0.5, 1.0), ("reverse_kl", 0.5, 1.0), ("jsd", 0.5, 1.0),
                                         ("jsd", 0.1, 2.0), ("jsd", 0.9, 0.7), ("forward_kl", 0.5, 2.5)])
def test_matches_naive_reference(kind, beta, t, logits):
    s, te = logits
    got = kd_divergence(s, te, kind, beta=beta, temperature=t)
    assert got.shape == (6,)
    assert torch.allclose(got.double(), naive_divergence(s, te, kind, beta, t), rtol=1e-4, atol=1e-6)
    assert (got >= -1e-6).all()


def test_forward_kl_gradient_is_cross_entropy_on_teacher_soft_labels(logits):
    s, te = logits
    for t in (1.0, 2.0):
        a = s.clone().requires_grad_(True)
        kd_divergence(a, te, "forward_kl", temperature=t).sum().backward()
        b = s.clone().requires_grad_(True)
        soft = F.softmax(te / t, dim=-1)  # [N, V]
        ce = -(soft * F.log_softmax(b / t, dim=-1)).sum(-1) * t * t  # the same T^2 scaling
        ce.sum().backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    # and at T=1 that gradient is softmax(student) - softmax(teacher)
    c = s.clone().requires_grad_(True)
    kd_divergence(c, te, "forward_kl").sum().backward()
    assert torch.allclose(c.grad, F.softmax(s, -1) - F.softmax(te, -1), atol=1e-6)


def test_teacher_gets_no_gradient(logits):
    s, te = logits
    te = te.clone().requires_grad_(True)
    s = s.clone().requires_grad_(True)
    kd_divergence(s, te, "reverse_kl").sum().backward()
    assert te.grad is None and s.grad is not None


def test_jsd_half_is_symmetric(logits):
    s, te = logits
    assert torch.allclose(kd_divergence(s, te, "jsd", 0.5), kd_divergence(te, s, "jsd", 0.5), atol=1e-6)
    assert (kd_divergence(s, te, "jsd", 0.5) <= math.log(2) + 1e-6).all()  # JSD is bounded by ln 2


def test_ce_mixing_and_normaliser(logits):
    s, te = logits
    targets = torch.tensor([0, 3, 5, 10, 2, 7])
    div = kd_divergence(s, te, "forward_kl")
    ce = selected_cross_entropy(s, targets)
    assert torch.allclose(ce, F.cross_entropy(s, targets, reduction="none"))
    loss, stats = kd_loss(s, te, targets, ce_weight=0.25, normalizer=20.0)
    assert loss.item() == pytest.approx((0.75 * div.sum() + 0.25 * ce.sum()).item() / 20.0, rel=1e-5)
    assert stats["ce"].item() == pytest.approx(ce.sum().item() / 20.0, rel=1e-5)
    # micro-batches dividing by the whole step's count add up to the one-batch loss
    a, _ = kd_loss(s[:2], te[:2], targets[:2], ce_weight=0.5, normalizer=6)
    b, _ = kd_loss(s[2:], te[2:], targets[2:], ce_weight=0.5, normalizer=6)
    whole, _ = kd_loss(s, te, targets, ce_weight=0.5)
    assert (a + b).item() == pytest.approx(whole.item(), rel=1e-5)


def test_bad_arguments(logits):
    s, te = logits
    with pytest.raises(ValueError, match="unknown divergence"):
        kd_divergence(s, te, "tvd")
    with pytest.raises(ValueError, match="0 < beta < 1"):
        kd_divergence(s, te, "jsd", beta=1.0)
    with pytest.raises(ValueError, match="share a vocabulary"):
        kd_divergence(s, te[:, :5])
    with pytest.raises(ValueError, match="needs targets"):
        kd_loss(s, te, ce_weight=0.5)
