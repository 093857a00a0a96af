"""Supervised stages: `run_sft` (SFT, and sequence-level KD on teacher traces) and `run_pretrain`.

Both build tokenised examples and hand them to `train_supervised`, the loop in view below: plan the
micro-batches, then for each optimizer step run forward/backward over this process's share, sum
gradients across processes, clip, step, log.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import torch

from srlm.data.collate import (
    TokenizedExample, filter_by_length, length_grouped_batches, pad_batch, tokenize_pair,
)
from srlm.data.prepare import to_sft_example
from srlm.data.prompts import completion_end, render_prompt
from srlm.data.sources import load_records
from srlm.errors import UserError
from srlm.models import apply_lora, load_model, save_model
from srlm.train.loop import (
    Dist, MetricsLog, broadcast_parameters, clip_and_step, init_distributed, load_resume_checkpoint,
    make_optimizer, make_scheduler, progress_bar, save_resume_checkpoint, sum_gradients, all_reduce_sum,
)
from srlm.train.losses import sft_loss


def load_stage_records(ref) -> list[dict]:
    return load_records(ref.name, split=ref.split, path=ref.path, limit=ref.limit, **ref.options)


def run_sft(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """Fine-tune on (prompt, completion) pairs in the paper's format; writes `out_dir/checkpoint`."""
    model, tok = load_model(model_dir, device, dtype="float32")
    records = load_stage_records(cfg.data)
    end = completion_end(tok)
    examples = []
    for r in records:
        ex = to_sft_example(r)
        prompt = render_prompt(tok, cfg.prompt, ex["prompt"])
        examples.append(tokenize_pair(tok, prompt, ex["completion"] + end, cfg.loss_on))
    kept, report = filter_by_length(examples, cfg.max_length)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    summary = train_supervised(model, tok, kept, cfg, out_dir, device, progress, desc="sft")
    summary["data"] = {"n_records": len(records), "n_too_long": report.n_too_long, "n_examples": len(kept)}
    return summary


def run_pretrain(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """Plain language modelling on question + reference solution text (loss on every token)."""
    model, tok = load_model(model_dir, device, dtype="float32")
    records = load_stage_records(cfg.data)
    examples = []
    for r in records:
        ids = tok.encode(f"{r['question']}\n{r['solution'] or r['answer']}", add_special_tokens=False)
        ids.append(tok.eos_token_id)
        examples.append(TokenizedExample(ids, list(ids)))
    kept, report = filter_by_length(examples, cfg.max_length)
    summary = train_supervised(model, tok, kept, cfg, out_dir, device, progress, desc="pretrain")
    summary["data"] = {"n_records": len(records), "n_too_long": report.n_too_long, "n_examples": len(kept)}
    return summary


def plan_micro_batches(examples: list[TokenizedExample], cfg, total_steps: int, per_step: int) -> list[list[int]]:
    """The whole run's micro-batches (lists of example indices), in order, epoch after epoch.

    A pure function of the data and the seed, so every process and every resumed run agrees on which
    examples each step sees without any communication.
    """
    lengths = [len(e.input_ids) for e in examples]
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < total_steps * per_step:
        rng = random.Random(cfg.seed * 1_000_003 + epoch)
        plan.extend(length_grouped_batches(lengths, cfg.batch_size, rng))
        epoch += 1
    return plan[: total_steps * per_step]


def train_supervised(model, tok, examples: list[TokenizedExample], cfg, out_dir: Path, device: torch.device,
                     progress: bool = True, desc: str = "sft") -> dict:
    """The supervised loop. One optimizer step = `world * grad_accum` micro-batches of `batch_size`."""
    if not examples:
        raise UserError(f"{desc}: no training examples left (all filtered out? raise max_length)")
    d: Dist = init_distributed(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_step = d.world * cfg.grad_accum
    steps = cfg.steps or max(1, math.ceil(getattr(cfg, "epochs", 1.0) * len(examples) / (cfg.batch_size * per_step)))
    plan = plan_micro_batches(examples, cfg, steps, per_step)
    torch.manual_seed(cfg.seed)
    if getattr(cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable()
    model.train()
    broadcast_parameters(model, d)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps)
    resume_dir = out_dir / "resume"
    start = 0
    if (resume_dir / "trainer_state.pt").exists():
        start, _ = load_resume_checkpoint(resume_dir, model, opt, sched)
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=start, enabled=d.main)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    bar = progress_bar(steps, desc, initial=start, enabled=progress and d.main)
    t_start, tokens_seen, last = time.perf_counter(), 0, {}
    for step in range(start, steps):
        t0 = time.perf_counter()
        step_batches = plan[step * per_step:(step + 1) * per_step]
        # The whole step's loss-token count: every micro-batch divides by it, so accumulation and data
        # parallelism give exactly the gradient of one big batch's token-mean loss.
        n_loss = sum(examples[i].n_predicted for mb in step_batches for i in mb)
        loss_sum, real_tokens = 0.0, 0
        for mb in step_batches[d.rank * cfg.grad_accum:(d.rank + 1) * cfg.grad_accum]:
            batch = {k: v.to(device) for k, v in pad_batch([examples[i] for i in mb], pad_id).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = sft_loss(logits, batch["labels"], normalizer=max(n_loss, 1))
            loss.backward()
            loss_sum += float(loss.detach())
            real_tokens += int(batch["attention_mask"].sum())
        sum_gradients(model, d)
        grad_norm = clip_and_step(model, opt, sched, cfg.max_grad_norm)
        loss_total = all_reduce_sum(loss_sum, d)
        real_tokens = int(all_reduce_sum(real_tokens, d))
        tokens_seen += real_tokens
        dt = time.perf_counter() - t0
        last = {"step": step + 1, "loss": loss_total, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm,
                "tokens": real_tokens, "tokens_per_s": real_tokens / dt, "seconds": dt}
        log.log(last)
        bar.set_postfix(loss=f"{loss_total:.3f}", lr=f"{last['lr']:.1e}")
        bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps and d.main:
            save_resume_checkpoint(resume_dir, model, opt, sched, step + 1, {})
    bar.close()
    log.close()
    if d.main:
        save_model(model, tok, out_dir / "checkpoint")
        shutil.rmtree(resume_dir, ignore_errors=True)  # the final checkpoint supersedes it
    return {"steps": steps, "final_loss": last.get("loss"), "tokens": tokens_seen,
            "train_seconds": time.perf_counter() - t_start}
