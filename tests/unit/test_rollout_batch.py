"""GRPO batches run each distinct prompt once: same log-probs and gradients as the whole sequences."""

from __future__ import annotations

import pytest
import torch

from srlm.engines.base import Completion
from srlm.train.optim import enable_gradient_checkpointing
from srlm.train.rollout_batch import completion_logprobs, pad_rollouts


def _model():
    import transformers

    cfg = transformers.Qwen2Config(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg)


def _rollouts():
    """Three prompts of different lengths, three completions each of different lengths (one truncated)."""
    g = torch.Generator().manual_seed(0)
    seqs = []
    for n_prompt in (7, 12, 9):
        prompt = torch.randint(3, 60, (n_prompt,), generator=g).tolist()
        for n in (1, 6, 11):
            ids = torch.randint(3, 60, (n,), generator=g).tolist()
            seqs.append((prompt, Completion(token_ids=ids, text="", finish_reason="length" if n == 11 else "stop")))
    return seqs


def _naive_logprobs(model, seqs, temperature):
    """One unpadded sequence at a time: log softmax(logits / T) at each completion token."""
    out = []
    for prompt, c in seqs:
        logits = model(input_ids=torch.tensor([prompt + c.token_ids])).logits[0] / temperature  # [L, V]
        rows = logits[len(prompt) - 1:-1].log_softmax(-1)  # [n, V]
        out.append(rows.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0])
    return out


def test_pad_rollouts_keeps_one_row_per_distinct_prompt():
    seqs = _rollouts()
    b = pad_rollouts(seqs, pad_id=0, mask_truncated=True)
    assert b.prompt_ids.shape == (3, 12) and b.owner.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b.prompt_mask.sum(1).tolist() == [7, 12, 9] and b.prompt_mask[0, :5].sum() == 0  # left padding
    assert b.completion_attn.sum(1).tolist() == [1, 6, 11] * 3
    assert b.loss_mask.sum(1).tolist() == [1, 6, 0] * 3  # truncated completions carry no loss


@pytest.mark.parametrize("ragged", [False, True])  # equal groups share prompt rows by expand, others by index
def test_shared_prefix_logprobs_and_gradients_equal_whole_sequences(ragged):
    model = _model()
    seqs = _rollouts()[:-1] if ragged else _rollouts()
    batch = pad_rollouts(seqs, pad_id=0)
    weights = torch.randn(batch.loss_mask.shape, generator=torch.Generator().manual_seed(2))

    def run():
        model.zero_grad()
        logp, ent = completion_logprobs(model, batch, temperature=0.7, with_entropy=True)
        (logp * weights * batch.loss_mask).sum().backward()
        return logp.detach(), ent, [p.grad.clone() for p in model.parameters()]

    shared_logp, ent, shared_grads = run()
    naive = _naive_logprobs(model, seqs, 0.7)
    for b, want in enumerate(naive):
        torch.testing.assert_close(shared_logp[b, :len(want)], want.detach(), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ent).all() and (ent >= 0).all()
    enable_gradient_checkpointing(model)  # this path runs whole sequences: the cache is off
    model.train()
    full_logp, _, full_grads = run()
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(shared_logp[mask], full_logp[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
