"""Every stage once on the real model, kept small (a few problems, one step): evaluation, SFT full and LoRA,
GRPO, and the chunked output-layer losses against the full-logits ones at its 49k vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from srlm.config import DatasetRef, GRPOConfig, SFTConfig
from srlm.train.losses import linear_token_logprobs, token_entropy, token_logprobs

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason=f"no GSM8K at {DATA / 'gsm8k'}")


@needs_data
def test_eval_a_few_problems(real_model_dir, tmp_path):
    from srlm.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(real_model_dir), "--data-path", str(DATA), "--benchmarks", "gsm8k",
                 "--limit", "3", "--max-new-tokens", "24", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    samples = [json.loads(x) for x in (out / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(0 < s["tokens"] <= 24 and s["response"] for s in samples)


@needs_data
@pytest.mark.parametrize("lora", [False, True])
def test_one_sft_step(real_model_dir, tmp_path, lora):
    from srlm.models import load_model
    from srlm.train.sft import run_sft

    cfg = SFTConfig(data=DatasetRef(name="gsm8k", split="train", path=str(DATA), limit=2), steps=1, batch_size=2,
                    max_length=384, lr=1e-5, lora={"enabled": lora, "dropout": 0.05})
    summary = run_sft(cfg, real_model_dir, tmp_path, torch.device("cpu"), progress=False)
    assert summary["steps"] == 1 and 0 < summary["final_loss"] < 10
    trained, _ = load_model(tmp_path / "checkpoint", torch.device("cpu"), dtype="float32")
    assert "quantization_config" not in json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert not list((tmp_path / "checkpoint").glob("adapter/*.gguf"))
    assert (tmp_path / "checkpoint" / "adapter").is_dir() == lora
    assert trained.config.vocab_size == 49152


@needs_data
def test_one_grpo_step(real_model_dir, tmp_path):
    from srlm.train.grpo import run_grpo

    cfg = GRPOConfig(data=DatasetRef(name="gsm8k", split="train", path=str(DATA), limit=4), steps=1,
                     prompts_per_step=2, group_size=2, max_new_tokens=12, min_new_tokens=12, beta=0.04,
                     rewards=["format", "accuracy"], collapse={"enabled": False})
    summary = run_grpo(cfg, real_model_dir, tmp_path, torch.device("cpu"), progress=False)
    assert summary["status"] == "done" and summary["steps"] == 1
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["completion_len_mean"] == 12 and "skipped_update" in metrics


def test_chunked_output_layer_matches_full_logits(real_model):
    model, tok = real_model
    ids = torch.tensor([tok.encode("Natalia sold clips to 48 of her friends in April, and then half as many.")])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, :-1]  # [T, E]
    hidden.requires_grad_(True)
    targets = ids[0, 1:]
    weight = model.lm_head.weight
    logp, ent = linear_token_logprobs(hidden, weight, None, targets, temperature=0.7, with_entropy=True, rows=5)
    logits = F.linear(hidden, weight)  # [T, V]
    want = token_logprobs(logits[None], targets[None], temperature=0.7)[0]
    torch.testing.assert_close(logp, want, atol=1e-4, rtol=1e-4)
    # entropies: two float32 sums over 49k terms each (lse - sum p z against -sum p log p)
    torch.testing.assert_close(ent, token_entropy(logits[None].detach(), 0.7)[0], atol=1e-3, rtol=1e-3)
    (g,) = torch.autograd.grad(logp.sum(), hidden)
    (h,) = torch.autograd.grad(want.sum(), hidden)
    torch.testing.assert_close(g, h, atol=1e-4, rtol=1e-4)
