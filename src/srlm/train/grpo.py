"""`run_grpo`: GRPO with the paper's objective (eq. 3) and rewards (eqs. 1-2), the loop in view.

One step: sample G completions for each of `prompts_per_step` questions from the current policy (which is
pi_old), score them with the named rewards, turn rewards into group-relative advantages, then run `mu`
passes of clipped-ratio updates with a k3 KL penalty to the frozen reference policy.

The reference policy is the stage's starting weights: a frozen copy for full fine-tuning, the same model
with its adapters switched off under LoRA (no second copy), and nothing at all when beta = 0.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from collections import deque
from contextlib import nullcontext
from pathlib import Path

import torch

from srlm.data.prepare import to_rl_example
from srlm.data.prompts import render_prompt, stop_token_ids
from srlm.engines.base import SamplingParams
from srlm.engines.hf import HFEngine
from srlm.errors import UserError
from srlm.grading.rewards import REWARDS
from srlm.grading import grade
from srlm.models import apply_lora, is_peft, load_model, save_model
from srlm.train.loop import (
    MetricsLog, Timer, clip_and_step, init_distributed, load_resume_checkpoint, make_optimizer,
    make_scheduler, progress_bar, save_resume_checkpoint,
)
from srlm.train.losses import group_advantages, grpo_loss, token_entropy, token_logprobs
from srlm.train.sft import load_stage_records

ANSWER_STOP = "</answer>"


class Collapsed(Exception):
    """Raised inside the loop when the collapse guard fires; carries the reason."""


class CollapseGuard:
    """Watches moving averages of format rate and entropy, and the loss, for signs of collapse."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.format = deque(maxlen=cfg.window)
        self.entropy = deque(maxlen=cfg.window)
        self.best_format = 0.0

    def check(self, loss: float, format_rate: float, entropy: float) -> str | None:
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not self.cfg.enabled:
            return None
        self.format.append(format_rate)
        self.entropy.append(entropy)
        if len(self.format) < self.format.maxlen:
            return None
        f_avg = sum(self.format) / len(self.format)
        e_avg = sum(self.entropy) / len(self.entropy)
        self.best_format = max(self.best_format, f_avg)
        if f_avg < self.cfg.min_format_rate and self.best_format - f_avg >= self.cfg.format_drop:
            return (f"format rate fell to {f_avg:.2f} (moving average over {len(self.format)} steps) "
                    f"from {self.best_format:.2f}")
        if e_avg > self.cfg.max_entropy:
            return f"token entropy rose to {e_avg:.2f} nats (limit {self.cfg.max_entropy})"
        return None


def run_grpo(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """Train with GRPO from `model_dir`; write `out_dir/checkpoint`. Returns a summary with `status`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = init_distributed(device)
    if d.world > 1:
        raise UserError("GRPO runs in one process for now; launch it without torchrun")
    unknown = [r for r in cfg.rewards if r not in REWARDS]
    if unknown:
        raise UserError(f"grpo.rewards: unknown reward(s) {unknown}; available: {sorted(REWARDS)}")
    weights = cfg.reward_weights or [1.0] * len(cfg.rewards)
    if len(weights) != len(cfg.rewards):
        raise UserError(f"grpo.reward_weights has {len(weights)} entries for {len(cfg.rewards)} rewards")

    torch.manual_seed(cfg.seed)
    model, tok = load_model(model_dir, device, dtype="float32")
    ref_model = None
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    elif cfg.beta > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()

    problems = [to_rl_example(r) for r in load_stage_records(cfg.data)]
    if not problems:
        raise UserError("grpo: the dataset has no problems")
    prompt_ids = [tok.encode(render_prompt(tok, cfg.prompt, p["prompt"]), add_special_tokens=False)
                  for p in problems]
    engine = HFEngine(model, tok, batch_size=max(cfg.micro_batch_size, cfg.group_size))
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              n=cfg.group_size, stop_token_ids=tuple(stop_token_ids(tok)),
                              stop_strings=(ANSWER_STOP,))

    opt = make_optimizer(model, cfg)
    minibatch = cfg.minibatch_size or cfg.prompts_per_step * cfg.group_size
    updates_per_step = cfg.mu * math.ceil(cfg.prompts_per_step * cfg.group_size / minibatch)
    sched = make_scheduler(opt, cfg, cfg.steps * updates_per_step)
    resume_dir = out_dir / "resume"
    start, extra = 0, {"cursor": 0}
    if (resume_dir / "trainer_state.pt").exists():
        start, extra = load_resume_checkpoint(resume_dir, model, opt, sched)
    cursor = int(extra.get("cursor", 0))
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=start)
    guard = CollapseGuard(cfg.collapse)
    bar = progress_bar(cfg.steps, "grpo", initial=start, enabled=progress)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    status, reason, last = "done", None, {}
    t_stage = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            timer = Timer()
            gen_seed = cfg.seed * 1_000_003 + step
            # ---- rollout: sample G completions per question (refilling zero-variance groups if asked)
            with timer.phase("generate"):
                batch_idx, completions, cursor, n_dropped = _rollout(
                    engine, sampling, prompt_ids, problems, cfg, cursor, gen_seed, weights)
            # ---- score
            with timer.phase("score"):
                texts = [c.text for group in completions for c in group]
                golds = [problems[i]["answer"] for i in batch_idx for _ in range(cfg.group_size)]
                per_reward = {name: torch.tensor([REWARDS[name](t, g) for t, g in zip(texts, golds)])
                              for name in cfg.rewards}
                rewards = sum(w * per_reward[n] for n, w in zip(cfg.rewards, weights))  # [B]
                grades = [grade(t, g) for t, g in zip(texts, golds)]
                advantages = group_advantages(rewards, cfg.group_size, scale=cfg.scale_rewards)  # [B]
            # ---- train
            with timer.phase("train"):
                seqs = [(prompt_ids[i], c) for i, group in zip(batch_idx, completions) for c in group]
                stats = _update(model, ref_model, opt, sched, seqs, advantages, cfg, device, tok, minibatch,
                                use_bf16)
            n = len(texts)
            lengths = [len(c.token_ids) for group in completions for c in group]
            last = {
                "step": step + 1,
                "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
                **{f"reward/{k}": float(v.mean()) for k, v in per_reward.items()},
                **{f"reward_std/{k}": float(v.std()) for k, v in per_reward.items()},
                "accuracy": sum(g.correct for g in grades) / n,
                "format_rate": sum(g.format_ok for g in grades) / n,
                "completion_len_mean": sum(lengths) / n, "completion_len_max": max(lengths),
                "truncation_rate": sum(c.truncated for group in completions for c in group) / n,
                "zero_var_groups": float((rewards.view(-1, cfg.group_size).std(dim=1) == 0).float().mean()),
                "dropped_groups": n_dropped,
                **stats,
                "lr": sched.get_last_lr()[0],
                **{f"seconds/{k}": v for k, v in timer.seconds.items()},
            }
            log.log(last)
            bar.set_postfix(reward=f"{last['reward']:.2f}", acc=f"{last['accuracy']:.2f}",
                            fmt=f"{last['format_rate']:.2f}", kl=f"{last['kl']:.3f}")
            bar.update(1)
            why = guard.check(last["loss"], last["format_rate"], last["entropy"])
            if why:
                raise Collapsed(why)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                save_resume_checkpoint(resume_dir, model, opt, sched, step + 1, {"cursor": cursor})
    except Collapsed as e:
        status, reason = "collapsed", str(e)
        _restore_last_good(model, model_dir, resume_dir, device)
    finally:
        bar.close()
        log.close()
    save_model(model, tok, out_dir / "checkpoint")
    if status == "done":
        shutil.rmtree(resume_dir, ignore_errors=True)
    return {"status": status, "reason": reason, "steps": last.get("step", start),
            "final": {k: v for k, v in last.items() if not k.startswith("seconds/")},
            "train_seconds": time.perf_counter() - t_stage}


def _rollout(engine, sampling, prompt_ids, problems, cfg, cursor, seed, weights):
    """Questions for this step (in a seeded epoch order) and their G completions each.

    With dynamic sampling, groups whose rewards are all equal carry no signal; they are dropped and more
    questions are drawn, up to 4 rounds, so the batch is as full of signal as the data allows.
    """
    kept_idx, kept = [], []
    n_zero_var = 0
    rounds = 4 if cfg.dynamic_sampling else 1
    for r in range(rounds):
        need = cfg.prompts_per_step - len(kept_idx)
        idx = [_question_at(cursor + k, len(problems), cfg.seed) for k in range(need)]
        cursor += need
        s = SamplingParams(**{**sampling.__dict__, "seed": seed * 7 + r})
        groups = engine.generate([prompt_ids[i] for i in idx], s)
        for i, group in zip(idx, groups):
            scores = [sum(w * REWARDS[n](c.text, problems[i]["answer"]) for n, w in zip(cfg.rewards, weights))
                      for c in group] if cfg.dynamic_sampling else None
            zero_var = scores is not None and max(scores) == min(scores)
            n_zero_var += zero_var
            if not zero_var or r == rounds - 1:
                kept_idx.append(i)
                kept.append(group)
        if len(kept_idx) >= cfg.prompts_per_step:
            break
    kept_idx, kept = kept_idx[: cfg.prompts_per_step], kept[: cfg.prompts_per_step]
    return kept_idx, kept, cursor, n_zero_var


def _question_at(position: int, n: int, seed: int) -> int:
    """The question at `position` of an endless stream of seeded shuffles of range(n)."""
    epoch, offset = divmod(position, n)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[offset]


def _pad_sequences(seqs, pad_id: int, device, mask_truncated: bool = False):
    """Right-padded prompt+completion ids [B, L], attention mask [B, L], completion mask [B, L-1].

    With `mask_truncated`, a completion cut by the length limit gets an all-zero completion mask: no
    gradient, since its reward judges an answer it never got to write.
    """
    width = max(len(p) + len(c.token_ids) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width - 1))
    for b, (p, c) in enumerate(seqs):
        full = list(p) + list(c.token_ids)
        ids[b, :len(full)] = torch.tensor(full)
        attn[b, :len(full)] = 1
        if not (mask_truncated and c.truncated):
            comp[b, len(p) - 1:len(full) - 1] = 1.0  # position t predicts token t+1
    return ids.to(device), attn.to(device), comp.to(device)


def _policy_logprobs(model, ids, attn, temperature: float, use_bf16: bool, with_entropy: bool = False):
    """log pi(token) of every next token [B, L-1] (and its entropy when asked)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1, :]  # [B, L-1, V]
    t = temperature if temperature > 0 else 1.0
    logp = token_logprobs(logits, ids[:, 1:], temperature=t)  # [B, L-1]
    ent = token_entropy(logits.detach(), temperature=t) if with_entropy else None
    return logp, ent


def _update(model, ref_model, opt, sched, seqs, advantages, cfg, device, tok, minibatch: int, use_bf16: bool):
    """`mu` passes of GRPO updates over the generation batch; returns step statistics."""
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    micro = cfg.micro_batch_size
    chunks = [list(range(s, min(s + micro, len(seqs)))) for s in range(0, len(seqs), micro)]
    padded = [_pad_sequences([seqs[i] for i in ch], pad_id, device, cfg.mask_truncated) for ch in chunks]
    need_old = cfg.mu > 1 or (cfg.minibatch_size and cfg.minibatch_size < len(seqs))
    old_logps, ref_logps = [], []
    with torch.no_grad():  # pi_old and pi_ref are fixed for the whole generation batch
        for ids, attn, _ in padded:
            old_logps.append(_policy_logprobs(model, ids, attn, cfg.temperature, use_bf16)[0] if need_old else None)
            if cfg.beta > 0:
                ctx = model.disable_adapter() if is_peft(model) else nullcontext()
                with ctx:
                    ref = ref_model if ref_model is not None else model
                    ref_logps.append(_policy_logprobs(ref, ids, attn, cfg.temperature, use_bf16)[0])
            else:
                ref_logps.append(None)
    totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    n_updates, n_tok = 0, 0
    for _ in range(cfg.mu):
        for mb_start in range(0, len(seqs), minibatch):
            mb = range(mb_start, min(mb_start + minibatch, len(seqs)))
            mb_chunks = [k for k, ch in enumerate(chunks) if ch[0] in mb]
            n_seqs = len(mb)
            n_tokens = float(sum(padded[k][2].sum() for k in mb_chunks))
            loss_total = 0.0
            for k in mb_chunks:
                ids, attn, comp = padded[k]
                logp, ent = _policy_logprobs(model, ids, attn, cfg.temperature, use_bf16, with_entropy=True)
                old = old_logps[k] if old_logps[k] is not None else logp.detach()
                loss, st = grpo_loss(logp, old, advantages[chunks[k]].to(device), comp, ref_logp=ref_logps[k],
                                     beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                                     aggregation=cfg.aggregation, max_tokens=cfg.max_new_tokens,
                                     n_seqs=n_seqs, n_tokens=n_tokens)
                loss.backward()
                loss_total += float(loss.detach())
                tok_here = float(comp.sum())
                n_tok += tok_here
                totals["kl"] += float(st["kl"]) * tok_here
                totals["clip_fraction"] += float(st["clip_fraction"]) * tok_here
                totals["entropy"] += float((ent * comp).sum())
            if not math.isfinite(loss_total):
                opt.zero_grad(set_to_none=True)  # never step on a non-finite loss
                totals["loss"] = loss_total
                return {**totals, "entropy": float("nan")}
            totals["grad_norm"] += clip_and_step(model, opt, sched, cfg.max_grad_norm)
            totals["loss"] += loss_total
            n_updates += 1
    n_tok = max(n_tok, 1.0)
    return {"loss": totals["loss"] / n_updates, "kl": totals["kl"] / n_tok,
            "clip_fraction": totals["clip_fraction"] / n_tok, "entropy": totals["entropy"] / n_tok,
            "grad_norm": totals["grad_norm"] / n_updates}


def _restore_last_good(model, model_dir: Path, resume_dir: Path, device) -> None:
    """After a collapse, put back the newest healthy weights: the last resume checkpoint, else the start."""
    from safetensors.torch import load_file

    saved = resume_dir / "model"
    if is_peft(model):
        if (saved / "adapter_model.safetensors").exists():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(saved / "adapter_model.safetensors")))
        else:  # the base weights never changed: zero adapters (lora_B = 0) are exactly the start
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.zero_()
        return
    src = saved if saved.exists() else Path(model_dir)
    weights = {}
    for f in sorted(src.glob("*.safetensors")):
        weights.update(load_file(str(f), device=str(device)))
    model.load_state_dict(weights, strict=False)  # tied lm_head is saved once
