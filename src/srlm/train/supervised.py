"""The supervised loop shared by the stage kinds `pretrain`, `sft`, `kd` and `distill`.

Each kind's module builds tokenised examples and hands them to `train_supervised`, the loop in view below:
plan the micro-batches, then for each optimizer step run forward/backward over this process's share, sum
gradients across processes, clip, step, log. Logit-level distillation (`distill.py`) runs the same loop
with its own loss and, on-policy, its own completions.

What makes it fast without changing the maths:
- batches are length-grouped (little padding), or packed (`packing`: no padding at all);
- right padding needs no attention mask for a causal model (real tokens never look right), so attention
  takes the plain causal kernel; packed rows pass `position_ids` instead and get per-example blocks;
- the LM head runs only at positions that carry loss (`logits_to_keep`), never over prompt or padding;
- one host sync per step (loss and grad norm together), fused AdamW, one flat gradient all-reduce.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from srlm.data.collate import IGNORE_INDEX, TokenizedExample, length_grouped_batches, pad_batch, packed_batch
from srlm.errors import NonFiniteLoss, UserError
from srlm.faults import fault_point
from srlm.hf_compat import logits_at
from srlm.memory import describe_estimate, micro_batch_token_budget, return_freed_memory_for, training_estimate
from srlm.models import save_model
from srlm.train.checkpoint import load_resume_checkpoint, save_resume_checkpoint
from srlm.train.distributed import (
    Dist, all_reduce_sums, broadcast_parameters, full_state_dict, gradient_sync, init_distributed, shard_model,
    sum_gradients,
)
from srlm.train.metrics import MetricsLog, progress_bar
from srlm.train.optim import (
    autocast, bf16_autocast_on, clip_and_step_tensor, compile_layers, compile_requested,
    enable_gradient_checkpointing, make_optimizer, make_scheduler,
)
from srlm.train.losses import linear_cross_entropy, selected_cross_entropy
from srlm.train.output_layer import decoder, plain_head


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


def split_by_tokens(examples: list[TokenizedExample], budget: int, packing: bool = False
                    ) -> list[list[TokenizedExample]]:
    """One micro-batch cut, in order, into pieces of at most `budget` tokens: rows x the longest row when
    padded, the sum of lengths when packed (a single longer example is a piece of its own). Each piece's
    loss is divided by the whole step's loss-token count, so the pieces' gradients add up to the batch's."""
    pieces: list[list[TokenizedExample]] = []
    piece: list[TokenizedExample] = []
    longest = total = 0
    for e in examples:
        n = len(e.input_ids)
        size = total + n if packing else (len(piece) + 1) * max(longest, n)
        if piece and size > budget:
            pieces.append(piece)
            piece, longest, total = [], 0, 0
        piece.append(e)
        longest, total = max(longest, n), total + n
    return pieces + [piece] if piece else pieces


def collate(examples: list[TokenizedExample], pad_id: int, packing: bool, row_length: int) -> dict:
    """Model inputs for one micro-batch: packed rows (`position_ids`) or right-padded rows.

    No attention mask either way: with right padding, causal attention already keeps real tokens from
    seeing the padding after them, and the padding's own outputs carry no loss.
    """
    if packing:
        return packed_batch(examples, pad_id, row_length)
    batch = pad_batch(examples, pad_id)
    return {"input_ids": batch["input_ids"], "labels": batch["labels"]}


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [B, T] bool: positions whose next token carries loss, targets [N]: those next tokens)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)  # [B, T]
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][keep[:, :-1]]  # [B, T], [N]


def selected_logits(model, batch: dict, keep: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] at the `keep` positions only: the LM head never sees prompt or padding positions."""
    return logits_at(model, keep, input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                     use_cache=False)  # [N, V]


def selected_hidden(model, batch: dict, keep: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states [N, E] at the `keep` positions (what the output layer would see)."""
    hidden = decoder(model)(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                            use_cache=False).last_hidden_state  # [B, T, E]
    return hidden[keep]  # [N, E]


def sft_step_loss(model, batch: dict, normalizer: float) -> tuple[torch.Tensor, dict]:
    """Token cross-entropy summed over the micro-batch, divided by the whole step's loss-token count.
    The output layer runs in chunks of positions where it is a plain linear map (`plain_head`)."""
    keep, targets = loss_positions(batch["labels"])
    head = plain_head(model)
    if head is not None:
        return linear_cross_entropy(selected_hidden(model, batch, keep), *head, targets).sum() / normalizer, {}
    loss = selected_cross_entropy(selected_logits(model, batch, keep), targets).sum() / normalizer
    return loss, {}


# (model, batch on device, step normaliser) -> (loss to backpropagate, stats as detached scalar tensors)
StepLoss = Callable[[torch.nn.Module, dict, float], tuple[torch.Tensor, dict]]
# (step, this rank's micro-batches of examples) -> the micro-batches to train on (e.g. student samples)
Rollout = Callable[[int, list[list[TokenizedExample]]], tuple[list[list[TokenizedExample]], dict]]


def train_supervised(model, tok, examples: list[TokenizedExample], cfg, out_dir: Path, device: torch.device,
                     progress: bool = True, desc: str = "sft", step_loss: StepLoss = sft_step_loss,
                     rollout: Rollout | None = None) -> dict:
    """The supervised loop. One optimizer step = `world * grad_accum` micro-batches of `batch_size`, each
    run in pieces of at most `micro_batch_tokens` tokens (`split_by_tokens`).

    The data position is the step number (the plan is a pure function of data and seed), so a resume
    checkpoint every `save_every` steps plus the RNG states makes a killed run, started again, end with
    the same weights. `step_loss` and `rollout` let logit-level KD reuse the loop: the teacher-scored
    loss, and on-policy completions sampled by the student in place of the dataset's.
    """
    if not examples:
        raise UserError(f"{desc}: no training examples left (all filtered out? raise max_length)")
    d: Dist = init_distributed(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_step = d.world * cfg.grad_accum
    steps = cfg.steps or max(1, math.ceil(getattr(cfg, "epochs", 1.0) * len(examples) / (cfg.batch_size * per_step)))
    plan = plan_micro_batches(examples, cfg, steps, per_step)
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if compile_requested(cfg):
        compile_layers(model)
    model.train()
    low_precision = bf16_autocast_on(device, getattr(cfg, "bf16_autocast", None))
    budget = cfg.micro_batch_tokens or micro_batch_token_budget(model, device, cfg.gradient_checkpointing,
                                                                low_precision)
    broadcast_parameters(model, d)
    model = shard_model(model, d, cfg.fsdp)
    return_freed_memory_for(model)
    if d.main:
        longest = min(cfg.max_length, max(len(e.input_ids) for e in examples))
        tokens = max(longest, min(budget, cfg.batch_size * longest))
        print(describe_estimate(desc, training_estimate(model, tokens, checkpointing=cfg.gradient_checkpointing,
                                                        low_precision=low_precision),
                                tokens), file=sys.stderr, flush=True)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps)
    resume_dir = out_dir / "resume"
    start = 0
    if (resume_dir / "trainer_state.pt").exists():
        start, _ = load_resume_checkpoint(resume_dir, model, opt, sched, d)
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=start, enabled=d.main)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packing = bool(getattr(cfg, "packing", False))
    bar = progress_bar(steps, desc, initial=start, enabled=progress and d.main)
    t_start, tokens_seen, last = time.perf_counter(), 0, {}
    for step in range(start, steps):
        t0 = time.perf_counter()
        mine = [[examples[i] for i in mb] for mb in plan[step * per_step:(step + 1) * per_step]
                [d.rank * cfg.grad_accum:(d.rank + 1) * cfg.grad_accum]]
        extra_stats: dict = {}
        if rollout is not None:
            mine, extra_stats = rollout(step, mine)
        # The whole step's loss-token count: every micro-batch divides by it, so accumulation and data
        # parallelism give exactly the gradient of one big batch's token-mean loss.
        n_loss, real_tokens = (int(x) for x in all_reduce_sums(d, sum(e.n_predicted for mb in mine for e in mb),
                                                               sum(len(e.input_ids) for mb in mine for e in mb)))
        loss_sum = torch.zeros((), device=device)
        stat_sums: dict[str, torch.Tensor] = {}
        # FSDP's forwards are collectives, so every process must run as many: its micro-batches stay whole
        pieces = mine if d.sharded else [piece for mb in mine for piece in split_by_tokens(mb, budget, packing)]
        for k, piece in enumerate(pieces):
            batch = {key: v.to(device) for key, v in collate(piece, pad_id, packing, cfg.max_length).items()}
            gradient_sync(model, d, k == len(pieces) - 1)
            with autocast(device, getattr(cfg, "bf16_autocast", None)):
                loss, stats = step_loss(model, batch, max(n_loss, 1))
            loss.backward()
            loss_sum += loss.detach()
            for key, v in stats.items():
                stat_sums[key] = stat_sums.get(key, 0) + v
        sum_gradients(model, d)
        grad_norm = clip_and_step_tensor(model, opt, sched, cfg.max_grad_norm)
        names = list(stat_sums)
        reduced = torch.stack([loss_sum, *[stat_sums[n].float() for n in names]]).double()
        if d.world > 1:
            import torch.distributed as dist

            dist.all_reduce(reduced)
        values = torch.cat([reduced, grad_norm.double().reshape(1)]).tolist()  # the step's one host sync
        _check_finite(step + 1, values[0], values[-1])
        tokens_seen += real_tokens
        dt = time.perf_counter() - t0
        last = {"step": step + 1, "loss": values[0], **dict(zip(names, values[1:-1])), **extra_stats,
                "lr": sched.get_last_lr()[0], "grad_norm": values[-1], "tokens": real_tokens,
                "loss_tokens": n_loss, "tokens_per_s": real_tokens / dt, "seconds": dt}
        log.log(last)
        bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{last['lr']:.1e}")
        bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
            save_resume_checkpoint(resume_dir, model, opt, sched, step + 1,
                                   {"examples_seen": (step + 1) * per_step * cfg.batch_size}, d)
        fault_point(desc, step=step + 1)
    bar.close()
    log.close()
    state = full_state_dict(model, d)  # FSDP: gathered on every rank's call, kept by rank 0
    if d.main:
        save_model(model, tok, out_dir / "checkpoint", state_dict=state)
        shutil.rmtree(resume_dir, ignore_errors=True)  # the final checkpoint supersedes it
    return {"steps": steps, "final_loss": last.get("loss"), "tokens": tokens_seen,
            "train_seconds": time.perf_counter() - t_start}


def _check_finite(step: int, loss: float, grad_norm: float) -> None:
    """A non-finite loss or gradient norm fails the stage: the weights are garbage from here on, and a
    stage that went on would end `done` with a model that answers nothing."""
    for what, value in (("loss", loss), ("gradient norm", grad_norm)):
        if not math.isfinite(value):
            raise NonFiniteLoss(f"{what} is {'NaN' if value != value else value} at step {step}")
