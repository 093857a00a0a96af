"""`bf16_autocast` (OptimConfig): opt-in bf16 autocast on CPUs with bf16 instructions. It reaches the SFT and
GRPO trainers, keeps a step within tolerance of fp32 on the tiny model, is refused on a CPU without bf16,
and enters stage keys only when set."""

import copy

import pytest
import torch

import srlm.train.optim as optim
from srlm.config import GRPOConfig, SFTConfig, load_config
from srlm.engines.base import Completion
from srlm.errors import UserError
from srlm.pipeline import content_key, stage_key
from srlm.train.distributed import Dist
from srlm.train.optim import autocast, bf16_autocast_on
from srlm.train.supervised import collate, sft_step_loss

from test_loop import _examples  # random examples with a prompt part out of the loss

CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa (relative rounding ~0.4% per product); the stated tolerance for one step on the
# tiny model: loss within 1%, gradient norm within 5% of fp32 (measured here: both within 1e-4)
LOSS_RTOL, GRAD_NORM_RTOL = 0.01, 0.05


@pytest.fixture()
def bf16_cpu(monkeypatch):
    """Pretend the CPU has bf16 instructions: autocast runs everywhere, only slower without them."""
    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from srlm.models import load_model
    from srlm.tiny import TinySpec, write_tiny_model

    d = write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=64, layers=2, heads=4, kv_heads=2,
                                                                   intermediate=128))
    model, tok = load_model(d, CPU, "float32")
    return d, model, tok


def test_unset_keeps_todays_rule_true_turns_it_on_false_never(bf16_cpu):
    assert not bf16_autocast_on(CPU, None) and not bf16_autocast_on(CPU, False)
    assert bf16_autocast_on(CPU, True)
    with autocast(CPU, True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(CPU, None):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_a_cpu_without_bf16_refuses_it_at_start_and_at_load(monkeypatch):
    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no bf16 instructions"):
        bf16_autocast_on(CPU, True)
    assert not bf16_autocast_on(CPU, None)
    with pytest.raises(UserError, match=r"grpo\.bf16_autocast: true, but this machine"):
        load_config(None, ["grpo.bf16_autocast=true"])


def test_stage_keys_change_only_when_it_is_set():
    cfg = SFTConfig(lr=3e-4, steps=7)
    before = {k: v for k, v in cfg.model_dump().items()
              if k not in ("compile", "fsdp", "micro_batch_tokens", "bf16_autocast")}
    assert stage_key("sft", cfg, "tiny:abc") == content_key({"kind": "sft", "config": before, "input": "tiny:abc"})
    keys = {stage_key("sft", cfg.model_copy(update={"bf16_autocast": v}), "tiny:abc") for v in (None, True, False)}
    assert len(keys) == 3


def test_the_chunked_head_backward_recomputes_under_the_forwards_autocast():
    """linear_token_logprobs recomputes its logits in the backward: with the forward's bf16 products, its
    gradients are those of the plain autocast computation (fp32 products there would not sum to 1 with the
    forward's log-normaliser)."""
    from srlm.train.losses import linear_token_logprobs

    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(6, 16, generator=g) * 4).requires_grad_()
    weight = (torch.randn(300, 16, generator=g) * 4).requires_grad_()
    targets = torch.randint(0, 300, (6,), generator=g)
    grads = []
    for chunked in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunked:
                logp = linear_token_logprobs(hidden, weight, None, targets, rows=4)[0]
            else:
                z = torch.nn.functional.linear(hidden, weight).float()
                logp = torch.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1)
        hidden.grad = weight.grad = None
        logp.sum().backward()
        grads.append((hidden.grad.clone(), weight.grad.clone()))
    (h1, w1), (h2, w2) = grads
    assert torch.allclose(h1, h2, rtol=1e-2, atol=1e-2) and torch.allclose(w1, w2, rtol=1e-2, atol=1e-2)


def _grad_norm(model) -> float:
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    return norm.item()


def test_an_sft_step_under_bf16_stays_within_tolerance_of_fp32(tiny, bf16_cpu):
    _, model, tok = tiny
    exs = _examples([9, 14, 6, 20, 11], seed=2)
    batch = collate(exs, tok.pad_token_id, False, 64)
    n = sum(e.n_predicted for e in exs)
    results = []
    for setting in (None, True):
        with autocast(CPU, setting):
            loss, _ = sft_step_loss(model, batch, n)
        loss.backward()
        results.append((loss.item(), _grad_norm(model)))
    (loss32, norm32), (loss16, norm16) = results
    assert loss16 != loss32  # bf16 really ran
    assert loss16 == pytest.approx(loss32, rel=LOSS_RTOL)
    assert norm16 == pytest.approx(norm32, rel=GRAD_NORM_RTOL)


def test_a_grpo_update_under_bf16_stays_within_tolerance_of_fp32(tiny, bf16_cpu):
    from srlm.train.grpo import grpo_update

    _, base, tok = tiny
    g = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(10, 200, (3 + i % 3,), generator=g).tolist(),
             Completion(torch.randint(10, 200, (4 + (i * 5) % 7,), generator=g).tolist(), "", "stop"))
            for i in range(8)]
    adv = torch.linspace(-0.5, 1.0, 8)  # not summing to zero: the loss is not zero
    cfg = GRPOConfig(prompts_per_step=2, group_size=4, beta=0.04, lr=1e-3)
    stats = []
    for use_bf16 in (False, True):
        model = copy.deepcopy(base)
        ref = copy.deepcopy(base).eval().requires_grad_(False)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        stats.append(grpo_update(model, ref, opt, sched, seqs, adv, cfg, tok.pad_token_id, Dist(), use_bf16))
    fp32, bf16 = stats
    assert fp32["grad_norm"] > 0 and bf16["grad_norm"] != fp32["grad_norm"]  # bf16 really ran
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=GRAD_NORM_RTOL)
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=LOSS_RTOL)


def test_the_field_reaches_the_sft_and_grpo_trainers(tiny, tmp_path, bf16_cpu, monkeypatch):
    from types import SimpleNamespace

    import srlm.train.grpo as grpo
    import srlm.train.supervised as supervised
    from srlm.config import DatasetRef

    d, model, tok = tiny
    seen = {}
    real_autocast, real_start = supervised.autocast, grpo._start

    def recording_autocast(device, setting=None):
        seen["sft"] = setting
        return real_autocast(device, setting)

    def recording_start(*args):
        run = real_start(*args)
        seen["grpo"] = run.use_bf16  # what every grpo_update of the run is given
        seen["rollouts"] = run.engine.compute_dtype  # what the rollouts are sampled in
        return run

    monkeypatch.setattr(supervised, "autocast", recording_autocast)
    monkeypatch.setattr(grpo, "_start", recording_start)
    cfg = SimpleNamespace(**SFTConfig(steps=1, batch_size=4, warmup_ratio=0.0, max_length=64,
                                      bf16_autocast=True).model_dump())
    supervised.train_supervised(copy.deepcopy(model), tok, _examples([9, 14, 6, 20]), cfg, tmp_path / "sft", CPU,
                                progress=False)
    gcfg = GRPOConfig(data=DatasetRef(name="synthetic", options={"n": 4}), prompt="tags_brief", steps=1,
                      prompts_per_step=2, group_size=2, max_new_tokens=4, bf16_autocast=True)
    grpo.run_grpo(gcfg, d, tmp_path / "grpo", CPU, progress=False)
    assert seen == {"sft": True, "grpo": True, "rollouts": torch.bfloat16}

