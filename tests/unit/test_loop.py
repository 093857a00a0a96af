"""The shared training machinery: schedule, optimizer, metrics sinks, packing, checkpoints, vocab checks."""

import json
import random

import pytest
import torch

from srlm.config import OptimConfig, SFTConfig
from srlm.data.collate import IGNORE_INDEX, TokenizedExample, pack_rows, packed_batch, pad_batch
from srlm.errors import UserError
from srlm.files import read_metrics
from srlm.train.beside import run_beside
from srlm.train.checkpoint import load_resume_checkpoint, save_resume_checkpoint
from srlm.train.distributed import Dist, sum_gradients
from srlm.train.metrics import MetricsLog
from srlm.train.optim import clip_and_step_tensor, lr_factor, make_optimizer, make_scheduler
from srlm.train.losses import sft_loss
from srlm.data.prepare import completion_for, is_paper_completion
from srlm.data.sources import load_stage_records
from srlm.train.supervised import collate, sft_step_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from srlm.models import load_model
    from srlm.tiny import TinySpec, write_tiny_model

    d = write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=32, layers=2, heads=4, kv_heads=2,
                                                                   intermediate=64))
    model, tok = load_model(d, torch.device("cpu"), "float32")
    return d, model, tok


def _examples(n_tokens, seed=0):
    rng = random.Random(seed)
    out = []
    for n in n_tokens:
        ids = [rng.randrange(5, 250) for _ in range(n)]
        p = rng.randrange(1, n)
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * p + ids[p:]))
    return out


# ------------------------------------------------------------------------------------------ schedule


def test_warmup_then_cosine_to_floor():
    f = [lr_factor(s, 100, 0.1, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after warm-up
    assert lr_factor(100, 100, 0.1, 0.1) == pytest.approx(0.1)


def test_optimizer_is_fused_adamw_without_decay_on_vectors():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(m, OptimConfig(lr=1e-3, weight_decay=0.1))
    assert opt.defaults["fused"] is True
    decay, no_decay = opt.param_groups
    assert [p.dim() for p in decay["params"]] == [2] and no_decay["weight_decay"] == 0.0


def test_clip_and_step_returns_preclip_norm_and_zeroes_grads():
    m = torch.nn.Linear(3, 1, bias=False)
    opt = make_optimizer(m, OptimConfig(lr=1e-3))
    sched = make_scheduler(opt, OptimConfig(lr=1e-3), 10)
    m.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    assert clip_and_step_tensor(m, opt, sched, 1.0).item() == pytest.approx(5.0)
    assert m.weight.grad is None
    sum_gradients(m, Dist())  # one process: nothing to do, nothing to fail


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_log_drops_steps_after_resume_point(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for s in range(1, 6):
        log.log({"step": s, "loss": 1.0 / s})
    log.close()
    path.write_text(path.read_text() + '{"step": 6, "lo')  # a line cut by a kill
    log = MetricsLog(path, resume_step=3)
    log.log({"step": 4, "loss": 0.0})
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_missing_logging_backends_warn_once_and_do_not_fail(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_backends(name, *args, **kwargs):
        if name in ("wandb", "torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_backends)
    monkeypatch.setenv("SRLM_TENSORBOARD", str(tmp_path / "tb"))
    monkeypatch.setenv("SRLM_WANDB", "1")
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log({"step": 1, "loss": 0.5})
    log.close()
    err = capsys.readouterr().err
    assert "tensorboard is not installed" in err and "wandb is not installed" in err
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]


# ------------------------------------------------------------------------------------------- packing


def test_pack_rows_keeps_examples_whole_and_rows_short():
    lengths = [7, 12, 5, 20, 9, 3, 30]
    rows = pack_rows(lengths, 24)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 24 for r in rows if len(r) > 1)
    assert [6] in rows  # longer than a row: a row of its own


def test_packed_batch_restarts_positions_and_masks_example_starts():
    exs = [TokenizedExample([1, 2, 3], [1, 2, 3]), TokenizedExample([4, 5], [4, 5])]
    b = packed_batch(exs, 0, 8)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]


def test_packed_and_maskless_losses_equal_the_padded_masked_loss(tiny):
    """Padding-free packing (position_ids, no mask) and right padding without a mask both give exactly the
    loss of the classic padded batch with an attention mask: the attention really is per example."""
    _, model, tok = tiny
    exs = _examples([7, 12, 5, 20, 9, 3, 16])
    n = sum(e.n_predicted for e in exs)
    b = pad_batch(exs, tok.pad_token_id)
    with torch.no_grad():
        ref = sft_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"],
                       normalizer=n)
        maskless, _ = sft_step_loss(model, collate(exs, tok.pad_token_id, False, 64), n)
        packed, _ = sft_step_loss(model, collate(exs, tok.pad_token_id, True, 24), n)
    assert collate(exs, tok.pad_token_id, True, 24)["input_ids"].shape[0] < len(exs)  # really packed
    assert maskless.item() == pytest.approx(ref.item(), rel=1e-5)
    assert packed.item() == pytest.approx(ref.item(), rel=1e-5)


def test_packed_gradients_equal_padded_gradients(tiny):
    _, model, tok = tiny
    exs = _examples([9, 4, 14, 6], seed=1)
    n = sum(e.n_predicted for e in exs)
    grads = []
    for packing in (False, True):
        model.zero_grad()
        loss, _ = sft_step_loss(model, collate(exs, tok.pad_token_id, packing, 32), n)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_gradient_checkpointing_changes_memory_not_gradients(tmp_path):
    from srlm.models import load_model
    from srlm.tiny import TinySpec, write_tiny_model
    from srlm.train.optim import enable_gradient_checkpointing

    d = write_tiny_model(tmp_path / "m", TinySpec(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64))
    exs = _examples([11, 6, 9], seed=2)
    grads = []
    for checkpointing in (False, True):
        model, tok = load_model(d, torch.device("cpu"), "float32")
        model.train()
        if checkpointing:
            enable_gradient_checkpointing(model)
        loss, _ = sft_step_loss(model, collate(exs, tok.pad_token_id, False, 32), 10)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---------------------------------------------------------------------------------------- checkpoints


def test_resume_checkpoint_round_trip(tiny, tmp_path):
    d, model, _ = tiny
    cfg = OptimConfig(lr=1e-2)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, 10)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    clip_and_step_tensor(model, opt, sched, 1.0)
    torch.manual_seed(123)
    save_resume_checkpoint(tmp_path / "resume", model, opt, sched, 1, {"examples_seen": 8})
    expected_rand = torch.rand(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    from srlm.models import load_model

    fresh, _ = load_model(d, torch.device("cpu"), "float32")
    opt2 = make_optimizer(fresh, cfg)
    sched2 = make_scheduler(opt2, cfg, 10)
    step, extra = load_resume_checkpoint(tmp_path / "resume", fresh, opt2, sched2)
    assert (step, extra) == (1, {"examples_seen": 8})
    assert torch.equal(torch.rand(3), expected_rand)  # RNG continues where it was saved
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert sched2.last_epoch == 1 and len(opt2.state) == len(opt.state)
    assert not (tmp_path / "resume.tmp").exists()


# --------------------------------------------------------------------------------------- data helpers


def test_paper_format_traces_are_kept_verbatim():
    trace = "<think>2 and 3 make 5</think>\n<answer>5</answer>"
    assert is_paper_completion(trace)
    assert not is_paper_completion("<think>a</think> extra <answer>5</answer>")
    assert not is_paper_completion("<think>a</think>\n<answer>5</answer><answer>6</answer>")
    rec = {"id": "x", "question": "2+3?", "answer": "5", "solution": trace, "meta": {}}
    assert completion_for(rec) == trace
    gsm = {"id": "y", "question": "q", "answer": "5", "solution": "2+3=<<2+3=5>>5\n#### 5",
           "meta": {"solution_format": "gsm8k"}}
    assert completion_for(gsm) == "<think>2+3=5</think>\n<answer>5</answer>"


def test_records_dataset_reads_canonical_records(tmp_path):
    path = tmp_path / "traces.jsonl"
    rows = [{"id": f"p{i}#0", "source": "synthetic", "question": f"q{i}", "answer": str(i),
             "solution": f"<think>r{i}</think>\n<answer>{i}</answer>", "meta": {"problem_id": f"p{i}"}}
            for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from srlm.config import DatasetRef

    recs = load_stage_records(DatasetRef(name="records", path=str(path)))
    assert [r["answer"] for r in recs] == ["0", "1", "2"]
    assert completion_for(recs[1]) == "<think>r1</think>\n<answer>1</answer>"
    with pytest.raises(UserError, match="needs data.path"):
        load_stage_records(SFTConfig(data=DatasetRef(name="records")).data)


# ------------------------------------------------------------------------------------------ vocabulary


def test_teacher_with_another_tokenizer_is_refused(tiny, tmp_path):
    from transformers import AutoTokenizer

    from srlm.train.distill import shared_vocab_width

    d, model, tok = tiny
    assert shared_vocab_width(model, tok, model, tok) == model.get_output_embeddings().weight.shape[0]
    bigger = AutoTokenizer.from_pretrained(d)
    bigger.add_tokens(["<extra>"])
    with pytest.raises(UserError, match="differ in size"):
        shared_vocab_width(model, tok, model, bigger)
    shuffled = AutoTokenizer.from_pretrained(d)
    vocab = shuffled.get_vocab()
    a, b = shuffled.convert_ids_to_tokens([40, 41])
    swapped = {**vocab, a: 41, b: 40}
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=_swap_tokenizer(shuffled, swapped), eos_token=tok.eos_token,
                                    pad_token=tok.pad_token)
    with pytest.raises(UserError, match="map ids differently"):
        shared_vocab_width(model, tok, model, other)


def _swap_tokenizer(tok, vocab):
    """A copy of `tok`'s backend with the given token -> id mapping."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["model"]["vocab"] = {k: v for k, v in vocab.items() if k in spec["model"]["vocab"]}
    return Tokenizer.from_str(json.dumps(spec))


# ------------------------------------------------------------------------------------------ run_beside


def test_run_beside_returns_both_results_and_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}

        def side():
            seen["side_grad"] = torch.is_grad_enabled()
            seen["side_threads"] = torch.get_num_threads()
            return torch.arange(6.0).sum()

        def main():
            seen["main_threads"] = torch.get_num_threads()
            x = torch.ones(3, requires_grad=True)
            return (x * 2).sum()

        side_out, main_out = run_beside(side, main)
        assert float(side_out) == 15.0 and float(main_out.detach()) == 6.0
        assert main_out.requires_grad  # the main pass keeps autograd; the side pass runs without it
        assert seen == {"side_grad": False, "side_threads": 1, "main_threads": 1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("failing", ["side", "main"])
def test_run_beside_raises_either_pass_error_and_restores_threads(failing):
    before = torch.get_num_threads()
    torch.set_num_threads(2)

    def boom():
        raise ValueError(f"{failing} failed")

    try:
        with pytest.raises(ValueError, match=f"{failing} failed"):
            run_beside(boom if failing == "side" else (lambda: 1), boom if failing == "main" else (lambda: 2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_run_beside_keeps_autograd_on_the_side_when_asked():
    """`side_grad=True` (GRPO's halves, each with its own backward): the side pass records a graph."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w = torch.ones(3, requires_grad=True)
        side_out, main_out = run_beside(lambda: (w * 3).sum(), lambda: (w * 2).sum(), side_grad=True)
        assert side_out.requires_grad and main_out.requires_grad
        assert torch.equal(torch.autograd.grad(side_out + main_out, w)[0], torch.full((3,), 5.0))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("lengths, budget, packing, expected", [
    ([5, 5, 5, 5], 100, False, [[5, 5, 5, 5]]),           # fits: one piece, the batch as it was
    ([5, 5, 5, 5], 10, False, [[5, 5], [5, 5]]),          # rows x longest <= 10
    ([3, 8, 2, 2], 16, False, [[3, 8], [2, 2]]),          # a longer row raises the padded size of its piece
    ([3, 8, 2, 2], 13, True, [[3, 8, 2], [2]]),           # packed: the sum of lengths
    ([20, 4, 4], 10, False, [[20], [4, 4]]),              # one example above the budget: a piece of its own
    ([4], 1, False, [[4]]),
])
def test_split_by_tokens(lengths, budget, packing, expected):
    from srlm.train.supervised import split_by_tokens

    examples = [TokenizedExample(list(range(n)), list(range(n))) for n in lengths]
    pieces = split_by_tokens(examples, budget, packing)
    assert [[len(e.input_ids) for e in p] for p in pieces] == expected
    assert [e for p in pieces for e in p] == examples  # in order, none lost
