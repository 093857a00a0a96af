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
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from srlm.data.prepare import to_rl_example
from srlm.data.prompts import render_prompt, stop_token_ids
from srlm.data.sources import load_stage_records
from srlm.engines.base import SamplingParams
from srlm.engines import EngineOptions, build_engine, close_engine
from srlm.errors import UserError
from srlm.faults import fault_point
from srlm.memory import describe_estimate, micro_batch_token_budget, return_freed_memory_for, training_estimate
from srlm.grading.rewards import REWARDS, score, weighted_sum
from srlm.models import SeededDropoutLinear, apply_lora, hf_weights, is_peft, load_model, save_model
from srlm.train.beside import can_run_beside, run_beside
from srlm.train.checkpoint import load_resume_checkpoint, save_resume_checkpoint
from srlm.train.distributed import all_reduce_sum, broadcast_parameters, init_distributed, sum_gradients
from srlm.train.metrics import MetricsLog, Timer, progress_bar
from srlm.train.optim import (
    bf16_autocast_on, clip_and_step, enable_gradient_checkpointing, make_optimizer, make_scheduler,
)
from srlm.train.losses import ADVANTAGE_ESTIMATORS, AGGREGATIONS, grpo_loss, rollout_mismatch
from srlm.train.rollout_batch import completion_logprobs, pad_rollouts

class Collapsed(Exception):
    """Raised inside the loop when the collapse guard fires; carries the reason."""


class CollapseGuard:
    """Watches the loss and moving averages of reward, format rate and entropy for the signs of RL
    collapse: a non-finite loss, the format rate falling to near zero from well above, the token entropy
    blowing up (the policy turning into noise) relative to where the stage started, or the entropy
    vanishing while the reward falls (the policy frozen on a bad answer: every group then has equal
    rewards, so nothing can pull it back)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.format = deque(maxlen=cfg.window)
        self.entropy = deque(maxlen=cfg.window)
        self.reward = deque(maxlen=cfg.window)
        self.best_format = 0.0
        self.best_reward = -math.inf
        self.start_entropy: float | None = None

    def check(self, loss: float | None, format_rate: float, entropy: float | None, reward: float) -> str | None:
        """The reason to stop, or None while training looks healthy. A step whose update was skipped has no
        loss, and no entropy unless its rollouts show one (`rollout_entropy`): None leaves those windows be."""
        if not all(math.isfinite(v) for v in (loss, entropy) if v is not None):
            return f"non-finite loss or entropy (loss {loss}, entropy {entropy})"
        if not self.cfg.enabled:
            return None
        self.format.append(format_rate)
        if entropy is not None:
            self.entropy.append(entropy)
        self.reward.append(reward)
        if len(self.format) < self.cfg.window:
            return None
        f_avg = sum(self.format) / len(self.format)
        r_avg = sum(self.reward) / len(self.reward)
        self.best_reward = max(self.best_reward, r_avg)
        self.best_format = max(self.best_format, f_avg)
        if f_avg < self.cfg.min_format_rate and self.best_format - f_avg >= self.cfg.format_drop:
            return (f"format rate fell to {f_avg:.2f} (moving average over {len(self.format)} steps) "
                    f"from {self.best_format:.2f}")
        if len(self.entropy) < self.cfg.window:
            return None
        e_avg = sum(self.entropy) / len(self.entropy)
        if self.start_entropy is None:
            self.start_entropy = e_avg
        if e_avg > max(self.cfg.max_entropy, self.start_entropy + self.cfg.entropy_rise):
            return f"token entropy rose to {e_avg:.2f} nats from {self.start_entropy:.2f}"
        if e_avg < self.cfg.min_entropy and self.best_reward - r_avg >= self.cfg.reward_drop:
            return (f"token entropy fell to {e_avg:.3f} nats while the reward fell to {r_avg:.2f} "
                    f"from {self.best_reward:.2f} (moving averages over {len(self.reward)} steps)")
        return None


class NoSignalWatch:
    """Says, once, when RL cannot learn: for `steps` steps in a row no rollout was in the answer format and
    every group's rewards were equal (so every advantage was zero and every update was skipped). A model
    that never writes the tags gets the same format reward on every sample, and nothing in GRPO's
    group-relative signal can teach it to."""

    MESSAGE = ("for {n} steps in a row no rollout was in the answer format (format rate 0) and every group's "
               "rewards were equal, so there was nothing to learn from and the updates were skipped: start "
               "from an SFT checkpoint, or use a prompt this model follows")

    def __init__(self, steps: int):
        self.steps, self.run, self.said = steps, 0, False

    def update(self, format_rate: float, zero_var_groups: float) -> str | None:
        """The warning at the step where the run of such steps reaches `steps` (once per stage), else None."""
        self.run = self.run + 1 if format_rate == 0 and zero_var_groups >= 1.0 else 0
        if self.steps and self.run >= self.steps and not self.said:
            self.said = True
            return self.MESSAGE.format(n=self.run)
        return None


def rollout_entropy(completions: list[list], d) -> float | None:
    """What a skipped update's rollouts say of the token entropy: 0 when, in every group (on every rank),
    all samples are the same tokens (sampling keeps drawing one sequence: the policy is deterministic in
    practice, the collapse the guard's low-entropy rule is for); None, unknown, otherwise. The update's
    forward pass, which measures the entropy, is exactly what a skipped step saves."""
    varied = any(len({tuple(c.token_ids) for c in group}) > 1 for group in completions)
    return None if all_reduce_sum(float(varied), d) > 0 else 0.0


def run_grpo(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """Train with GRPO from `model_dir`; write `out_dir/checkpoint`. Returns a summary with `status`.

    Under torchrun / accelerate launch each process samples and scores its share of the step's questions
    (whole groups, so advantages stay local), and gradients are summed with losses normalised by the
    whole batch's counts: the update equals the single-process one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = init_distributed(device)
    _check_config(cfg, d)
    run = _start(cfg, model_dir, device, d)
    resume_dir = out_dir / "resume"
    start, cursor = _resume(run, resume_dir)
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=start, enabled=d.main)
    guard, no_signal = CollapseGuard(cfg.collapse), NoSignalWatch(cfg.no_signal_steps)
    bar = progress_bar(cfg.steps, "grpo", initial=start, enabled=progress and d.main)
    status, reason, last, warnings = "done", None, {}, []
    t_stage, tokens = time.perf_counter(), 0
    try:
        for step in range(start, cfg.steps):
            last, completions, skip, n_tokens, cursor = _grpo_step(run, step, cursor)  # rollout, score, update
            tokens += n_tokens
            _warn_no_signal(no_signal, last, warnings, d)
            _log_step(log, bar, last, skip)
            why = guard.check(None, last["format_rate"], rollout_entropy(completions, d), last["reward"]) if skip \
                else guard.check(last["loss"], last["format_rate"], last["entropy"], last["reward"])
            if why:
                raise Collapsed(why)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps and d.main:
                save_resume_checkpoint(resume_dir, run.model, run.opt, run.sched, step + 1, {"cursor": cursor})
            fault_point("grpo", step=step + 1)
    except Collapsed as e:
        status, reason = "collapsed", str(e)
        _restore_last_good(run.model, model_dir, resume_dir, device)
    finally:
        bar.close()
        log.close()
        close_engine(run.engine)  # vLLM's KV cache back before the checkpoint is written and evaluated
    if d.main:
        save_model(run.model, run.tok, out_dir / "checkpoint")
        if status == "done":
            shutil.rmtree(resume_dir, ignore_errors=True)
    return {"status": status, "reason": reason, "steps": last.get("step", start), "tokens": tokens,
            "warnings": warnings,
            "final": {k: v for k, v in last.items() if not k.startswith("seconds/")},
            "train_seconds": time.perf_counter() - t_stage}


@dataclass
class _Run:
    """What every step of a GRPO stage uses: the config, the policy and its frozen reference, the optimizer,
    the rollout engine and how it samples, the questions and their prompts."""
    cfg: Any
    d: Any
    model: Any
    ref_model: Any
    tok: Any
    opt: Any
    sched: Any
    engine: Any
    sampling: SamplingParams
    problems: list
    prompt_ids: list
    pad_id: int
    weights: list
    use_bf16: bool


def _start(cfg, model_dir: Path, device: torch.device, d) -> _Run:
    """Load the policy (LoRA or a frozen reference copy), the questions, the engine and the optimizer."""
    torch.manual_seed(cfg.seed)
    model, tok = load_model(model_dir, device, dtype="float32")
    ref_model = None
    use_bf16 = bf16_autocast_on(device, cfg.bf16_autocast)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, tok)
    elif cfg.beta > 0:
        ref_model = frozen_reference(model, torch.bfloat16 if use_bf16 else None)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    broadcast_parameters(model, d)

    problems = [to_rl_example(r) for r in load_stage_records(cfg.data)]
    if not problems:
        raise UserError("grpo: the dataset has no problems")
    prompt_ids = [tok.encode(render_prompt(tok, cfg.prompt, p["prompt"]), add_special_tokens=False)
                  for p in problems]
    engine = _rollout_engine(cfg, model, tok, model_dir, device, use_bf16)
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                              temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.group_size,
                              stop_token_ids=tuple(stop_token_ids(tok)), stop_strings=tuple(cfg.stop))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return_freed_memory_for(model)
    if d.main:
        longest = max(map(len, prompt_ids)) + cfg.max_new_tokens  # the longest a rollout row can be
        rows = min(_micro_batch_rows(model, cfg, longest, use_bf16), cfg.prompts_per_step * cfg.group_size)
        tokens = rows * longest
        print(describe_estimate("grpo", training_estimate(model, tokens, ref_model, cfg.gradient_checkpointing,
                                                          use_bf16), tokens),
              file=sys.stderr, flush=True)
    opt = make_optimizer(model, cfg)
    batch_seqs = cfg.prompts_per_step * cfg.group_size
    minibatch = cfg.minibatch_size or batch_seqs
    sched = make_scheduler(opt, cfg, cfg.steps * cfg.mu * math.ceil(batch_seqs / minibatch))
    return _Run(cfg, d, model, ref_model, tok, opt, sched, engine, sampling, problems, prompt_ids, pad_id,
                cfg.reward_weights or [1.0] * len(cfg.rewards), use_bf16)


def frozen_reference(model, products: torch.dtype | None = None):
    """A frozen copy of `model`, the KL penalty's reference policy. With `products` (bf16, when the stage
    runs under bf16 autocast), the linear layers' weights are stored in that dtype: autocast casts every
    one of them to it in every forward anyway (a frozen weight's cast is not cached), so the reference
    computes the same numbers, without a cast per pass and in half the memory. Embeddings (and an output
    layer tied to them) and norms keep their dtype: the residual stream starts from the embedding."""
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    if products is not None:
        embeddings = {id(m.weight) for m in ref.modules() if isinstance(m, torch.nn.Embedding)}
        for module in ref.modules():
            if type(module) is torch.nn.Linear and id(module.weight) not in embeddings:
                module.to(products)
    return ref


def _resume(run: _Run, resume_dir: Path) -> tuple[int, int]:
    """The step to start at and the question cursor: from the resume checkpoint if there is one."""
    start, extra = 0, {"cursor": 0}
    if (resume_dir / "trainer_state.pt").exists():
        start, extra = load_resume_checkpoint(resume_dir, run.model, run.opt, run.sched)
    if start:
        _sync_engine(run.engine, run.model)  # a resumed policy is not the one the engine loaded
    return start, int(extra.get("cursor", 0))


def _grpo_step(run: _Run, step: int, cursor: int):
    """One step: rollout -> score -> advantages -> update. Returns (the step's metrics, the completions,
    whether the update was skipped, the tokens it trained on, the new cursor)."""
    cfg, d = run.cfg, run.d
    timer, t_step = Timer(), time.perf_counter()
    # ---- rollout: G completions per question of this process's share of the step, each graded once
    batch_idx, completions, scored, cursor, n_dropped = _rollout(run, cfg, cursor, cfg.seed * 1_000_003 + step, timer)
    fault_point("grpo:after_generate", step=step + 1)
    # ---- the named rewards, their weighted sum and group-relative advantages
    with timer.phase("score"):
        per_reward, rewards, grades = _gather_scores(cfg, run.weights, scored)
        advantages = ADVANTAGE_ESTIMATORS[cfg.advantage](rewards, cfg.group_size, scale=cfg.scale_rewards)  # [B]
    # ---- mu passes of clipped-ratio updates; none when every advantage is zero: the clipped
    # objective has no gradient then, so the passes would be spent for (almost) nothing
    seqs = [(run.prompt_ids[i], c) for i, group in zip(batch_idx, completions) for c in group]
    skip = all_reduce_sum(float(bool(advantages.ne(0).any())), d) == 0
    with timer.phase("train"):
        if skip:
            stats = {"skipped_update": 1.0}
        else:
            stats = {**grpo_update(run.model, run.ref_model, run.opt, run.sched, seqs, advantages, cfg, run.pad_id,
                                   d, run.use_bf16), "skipped_update": 0.0}
            _sync_engine(run.engine, run.model)
    n_tokens = sum(len(p) + len(c.token_ids) for p, c in seqs)
    timer.seconds["step"] = time.perf_counter() - t_step
    metrics = {"step": step + 1, **_rollout_metrics(per_reward, rewards, grades, completions, cfg.group_size, d),
               "dropped_groups": n_dropped, **stats, "lr": run.sched.get_last_lr()[0],
               **{f"seconds/{k}": v for k, v in timer.seconds.items()}}
    return metrics, completions, skip, n_tokens, cursor


def _score_group(cfg, group, gold: str) -> tuple[dict[str, list[float]], list]:
    """One group's completions graded once: (name -> each completion's reward, the grades)."""
    return score(cfg.rewards, [c.text for c in group], [gold] * len(group))


def _gather_scores(cfg, weights, scored):
    """The step's groups' scores as (name -> rewards [B], the weighted reward [B], the grades)."""
    per_reward = {name: torch.tensor([v for values, _ in scored for v in values[name]])
                  for name in cfg.rewards}  # name -> [B]
    rewards = weighted_sum([per_reward[n] for n in cfg.rewards], weights)  # [B]
    return per_reward, rewards, [g for _, grades in scored for g in grades]


def _warn_no_signal(no_signal: NoSignalWatch, last: dict, warnings: list, d) -> None:
    """Add the no-signal warning to the step's metrics (and say it) the step it first holds."""
    warning = no_signal.update(last["format_rate"], last["zero_var_groups"])
    if warning:
        warnings.append(warning)
        last["warning"] = warning
        if d.main:
            print(f"grpo: warning: {warning}", file=sys.stderr, flush=True)


def _log_step(log: MetricsLog, bar, last: dict, skip: bool) -> None:
    log.log(last)
    bar.set_postfix(reward=f"{last['reward']:.2f}", acc=f"{last['accuracy']:.2f}",
                    fmt=f"{last['format_rate']:.2f}", kl="skipped" if skip else f"{last['kl']:.3f}")
    bar.update(1)


def _rollout_engine(cfg, model, tok, model_dir: Path, device: torch.device, use_bf16: bool):
    """The engine that samples rollouts. `hf` decodes with the policy module itself (no copy, nothing to
    sync), in bf16 under `bf16_autocast` (from bf16 copies of the current weights, made per step: the
    matrix products are then bf16 in sampling as in training; pi_old stays the trainer's own forward);
    `vllm` loads its own copy from the stage's input and gets the weights after each update."""
    opts = EngineOptions(model=str(model_dir), batch_size=max(cfg.micro_batch_size, cfg.group_size),
                         seed=cfg.seed, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                         kv_cache_gb=cfg.vllm_kv_cache_gb, in_process=True,
                         compute_dtype="bfloat16" if use_bf16 else None)
    return build_engine(cfg.engine, opts, loaded=(model, tok))[0]


def _sync_engine(engine, model) -> None:
    """Give an engine that holds its own weights (vLLM) the policy's current ones (LoRA folded in)."""
    if hasattr(engine, "load_weights"):
        with torch.no_grad(), hf_weights(model) as weights:
            engine.load_weights(weights)


def _check_config(cfg, d) -> None:
    unknown = [r for r in cfg.rewards if r not in REWARDS]
    if unknown:
        raise UserError(f"grpo.rewards: unknown reward(s) {unknown}; available: {sorted(REWARDS)}")
    if cfg.reward_weights is not None and len(cfg.reward_weights) != len(cfg.rewards):
        raise UserError(f"grpo.reward_weights has {len(cfg.reward_weights)} entries for {len(cfg.rewards)} rewards")
    if cfg.aggregation not in AGGREGATIONS:
        raise UserError(f"grpo.aggregation: unknown {cfg.aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
    if cfg.tis_cap is not None and cfg.engine == "hf":
        raise UserError("grpo.tis_cap corrects for a sampling engine other than the policy; the hf engine samples "
                        "with the policy itself: set grpo.engine: vllm, or tis_cap: null")
    if cfg.prompts_per_step % d.world:
        raise UserError(f"grpo.prompts_per_step ({cfg.prompts_per_step}) must divide evenly over {d.world} processes")
    minibatch = cfg.minibatch_size or cfg.prompts_per_step * cfg.group_size
    if minibatch % (cfg.group_size * d.world) and cfg.minibatch_size:
        raise UserError(f"grpo.minibatch_size ({minibatch}) must be a multiple of group_size x processes")
    if cfg.dynamic_sampling and d.world > 1:
        raise UserError("grpo.dynamic_sampling runs in one process; turn it off under torchrun")


def _rollout(run: _Run, cfg, cursor: int, seed: int, timer: Timer):
    """This process's questions for the step (from a seeded epoch order), their G completions each, and each
    group's scores (every completion graded once, here).

    Every process walks the same question stream and takes its own slice. With dynamic sampling (one
    process), groups whose rewards are all equal carry no signal: they are dropped and more questions
    drawn, up to 4 rounds, so the batch is as full of signal as the data allows.
    """
    d = run.d
    share = cfg.prompts_per_step // d.world
    kept_idx, kept, kept_scores, n_dropped = [], [], [], 0
    rounds = 4 if cfg.dynamic_sampling else 1
    for r in range(rounds):
        need = cfg.prompts_per_step - len(kept_idx) * d.world if r else cfg.prompts_per_step
        stream = [_question_at(cursor + k, len(run.problems), cfg.seed) for k in range(need)]
        cursor += need
        idx = stream[d.rank * share:(d.rank + 1) * share] if r == 0 else stream
        with timer.phase("generate"):
            groups = run.engine.generate([run.prompt_ids[i] for i in idx],
                                         replace(run.sampling, seed=seed * 7 + r * 997 + d.rank))
        with timer.phase("score"):
            for i, group in zip(idx, groups):
                if len(kept_idx) >= share:
                    break
                values, grades = _score_group(cfg, group, run.problems[i]["answer"])
                if cfg.dynamic_sampling and r < rounds - 1 and _all_equal(values, run.weights, cfg.rewards):
                    n_dropped += 1
                    continue
                kept_idx.append(i)
                kept.append(group)
                kept_scores.append((values, grades))
        if len(kept_idx) >= share:
            break
    return kept_idx, kept, kept_scores, cursor, n_dropped


def _all_equal(values: dict[str, list[float]], weights: list[float], names: list[str]) -> bool:
    """Whether every completion of a group has the same weighted reward (the group carries no signal)."""
    totals = {weighted_sum([values[n][k] for n in names], weights) for k in range(len(values[names[0]]))}
    return len(totals) == 1


def _question_at(position: int, n: int, seed: int) -> int:
    """The question at `position` of an endless stream of seeded shuffles of range(n)."""
    epoch, offset = divmod(position, n)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[offset]


def _rollout_metrics(per_reward, rewards, grades, completions, group_size: int, d) -> dict:
    """Means over every process's rollouts: rewards, accuracy, format, lengths, truncation, dead groups."""
    flat = [c for group in completions for c in group]
    lengths = torch.tensor([float(len(c.token_ids)) for c in flat])
    sums = {
        "reward": float(rewards.sum()), "reward_sq": float((rewards ** 2).sum()),
        **{f"reward/{k}": float(v.sum()) for k, v in per_reward.items()},
        "accuracy": float(sum(g.correct for g in grades)), "format_rate": float(sum(g.format_ok for g in grades)),
        "completion_len_mean": float(lengths.sum()),
        "truncation_rate": float(sum(c.truncated for c in flat)),
        "zero_var_groups": float((rewards.view(-1, group_size).std(dim=1) == 0).sum()),
        "n": float(len(flat)), "groups": float(len(flat) // group_size),
    }
    sums = {k: all_reduce_sum(v, d) for k, v in sums.items()}
    n = max(sums.pop("n"), 1.0)
    groups = max(sums.pop("groups"), 1.0)
    out = {k: v / n for k, v in sums.items() if k not in ("reward_sq", "zero_var_groups")}
    out["reward_std"] = math.sqrt(max(0.0, sums["reward_sq"] / n - out["reward"] ** 2))
    out["zero_var_groups"] = sums["zero_var_groups"] / groups
    out["completion_len_max"] = float(lengths.max()) if len(flat) else 0.0
    return out


def grpo_update(model, ref_model, opt, sched, seqs, advantages, cfg, pad_id: int, d, use_bf16: bool) -> dict:
    """`mu` passes of GRPO updates over this process's sequences; returns the step's statistics.

    Each minibatch: log-probs -> `grpo_loss` -> backward, chunk by chunk (`_ChunkPasses.backward`), then one
    optimizer step. pi_old and pi_ref log-probs are computed once, before any update. With mu = 1 and one
    minibatch the policy has not moved at the first forward, so pi_old is that forward's own (detached)
    output and the extra pass is skipped.
    """
    device = next(model.parameters()).device
    n_local = len(seqs)
    halves = can_run_beside(device) and not d.sharded and not _draws_random_numbers(model)
    chunks, units = _micro_batches(n_local, _rows_per_micro_batch(model, seqs, cfg, d, use_bf16), halves)
    padded = [pad_rollouts([seqs[i] for i in ch], pad_id, cfg.mask_truncated).to(device) for ch in chunks]
    minibatch = cfg.minibatch_size or cfg.prompts_per_step * cfg.group_size  # global sequences per update
    local_mb = minibatch // d.world
    passes = _ChunkPasses(model, ref_model, cfg, use_bf16, padded, chunks, advantages.to(device), minibatch)
    passes.before_update(need_old=cfg.mu > 1 or local_mb < n_local)
    totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    n_updates, n_tok = 0, 0.0
    for _ in range(cfg.mu):
        for mb_start in range(0, n_local, local_mb):
            mb_units = [u for u in units if mb_start <= chunks[u[0]][0] < mb_start + local_mb]
            # the whole minibatch's counts, over every process, normalise each chunk's loss
            n_tokens = all_reduce_sum(float(sum(padded[k].loss_mask.sum() for u in mb_units for k in u)), d)
            loss_total = 0.0
            for unit in mb_units:
                for k, loss, st, ent in passes.backward(unit, n_tokens):
                    loss_total += float(loss)
                    here = float(padded[k].loss_mask.sum())
                    n_tok += here
                    _add_chunk_stats(totals, st, ent, here)
            loss_total = all_reduce_sum(loss_total, d)
            if not math.isfinite(loss_total):
                opt.zero_grad(set_to_none=True)  # never step on a non-finite loss
                return {**totals, "loss": loss_total, "entropy": float("nan")}
            sum_gradients(model, d)
            totals["grad_norm"] += clip_and_step(model, opt, sched, cfg.max_grad_norm)
            totals["loss"] += loss_total
            n_updates += 1
    return _update_stats(totals, n_updates, n_tok, d)


def _rows_per_micro_batch(model, seqs, cfg, d, use_bf16: bool = False) -> int:
    """`micro_batch_size`, fewer where that many rows of the longest sequence would pass `micro_batch_tokens`
    (its default from the model's estimated activations). FSDP's forwards are collectives that every process
    must run as many times: there, `micro_batch_size` alone."""
    if d.sharded or not seqs:
        return cfg.micro_batch_size
    longest = max(len(p) for p, _ in seqs) + max(len(c.token_ids) for _, c in seqs)  # rows pad to this
    return _micro_batch_rows(model, cfg, longest, use_bf16)


def _micro_batch_rows(model, cfg, longest: int, use_bf16: bool) -> int:
    """Rows of `longest` tokens per micro-batch: `micro_batch_size`, fewer where that many would pass
    `micro_batch_tokens` (default: `micro_batch_token_budget`, from the model's estimated activations).
    The stage's printed estimate and its updates both size micro-batches here."""
    device = next(model.parameters()).device
    budget = cfg.micro_batch_tokens or micro_batch_token_budget(model, device, cfg.gradient_checkpointing, use_bf16)
    return max(1, min(cfg.micro_batch_size, budget // longest))


def _micro_batches(n: int, micro: int, halves: bool) -> tuple[list[list[int]], list[tuple[int, ...]]]:
    """Rows 0..n-1 cut into micro-batches of `micro`, each cut in two halves when `halves` (and it has two
    rows or more). Returns (chunks: each chunk's rows, units: each micro-batch's chunk indices, (k,) or
    (k1, k2))."""
    chunks, units = [], []
    for s in range(0, n, micro):
        rows = list(range(s, min(s + micro, n)))
        cut = [rows[:(len(rows) + 1) // 2], rows[(len(rows) + 1) // 2:]] if halves and len(rows) > 1 else [rows]
        units.append(tuple(range(len(chunks), len(chunks) + len(cut))))
        chunks += cut
    return chunks, units


class _ChunkPasses:
    """The forward and backward passes of one update's chunks (padded micro-batches or their halves).

    On CPU with two or more threads (and no FSDP), each micro-batch is cut in two halves that run side by
    side, one core each (`run_beside`): the reference forward, the policy forward, the loss and the
    backward of one half beside the other's, the two gradients then summed in a fixed order. Why: each
    pass then runs without the thread barriers of every op, which stall whenever a core is busy elsewhere;
    on the bench (2 cores, 32 rows) an update took 0.97-1.05 s against 1.08-1.11 s as one micro-batch
    (medians of two runs, 43-48 ms paired, 28 of 40 pairs faster, on a host shared with other tenants).
    Same loss and gradient up to float rounding; peak memory about that of one whole micro-batch. A policy
    with active dropout (LoRA's, say) runs its micro-batches whole: two threads drawing from one random
    generator in whatever order they happen to run would make the update differ from run to run.

    A separate frozen reference on CPU runs beside the policy's forward on the same batch, each on half of
    the cores: beside pi_old's when that is needed, else beside the policy's forward or in each half's
    pass. LoRA's reference is the policy with its adapters off, which cannot run while the policy runs: it
    is computed before the update, alone.
    """

    def __init__(self, model, ref_model, cfg, use_bf16: bool, padded: list, chunks: list, advantages, minibatch: int):
        self.model, self.ref_model, self.cfg, self.use_bf16 = model, ref_model, cfg, use_bf16
        self.padded, self.chunks, self.advantages, self.minibatch = padded, chunks, advantages, minibatch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.beside = cfg.beta > 0 and ref_model is not None and can_run_beside(advantages.device)
        self.old_logps: list = []
        self.ref_logps: list = []

    def reference(self, batch):
        with (self.model.disable_adapter() if is_peft(self.model) else nullcontext()):
            return completion_logprobs(self.ref_model or self.model, batch, self.cfg.temperature, self.use_bf16,
                                       lean=self.cfg.lean_forward)[0]

    def pi_old(self, batch):
        return completion_logprobs(self.model, batch, self.cfg.temperature, self.use_bf16,
                                   lean=self.cfg.lean_forward)[0]

    def before_update(self, need_old: bool) -> None:
        """pi_old's log-probs (when the policy will have moved by a chunk's pass) and the reference's (unless
        they run beside the policy's forward later), chunk by chunk."""
        with torch.no_grad():
            for batch in self.padded:
                if need_old and self.beside:
                    ref, old = run_beside(lambda: self.reference(batch), lambda: self.pi_old(batch))
                else:
                    old = self.pi_old(batch) if need_old else None
                    ref = self.reference(batch) if self.cfg.beta > 0 and not self.beside else None
                self.old_logps.append(old)
                self.ref_logps.append(ref)

    def backward(self, unit: tuple[int, ...], n_tokens: float) -> list[tuple]:
        """One micro-batch's loss and gradients (added to .grad): its two halves side by side, each with its
        own backward, or the micro-batch whole. Returns (chunk, loss, statistics, entropy sum) per chunk."""
        if len(unit) == 2:
            # the first half's backward adds into .grad, the second's gradients are added after it: the same
            # sum, in the same order, on every run; one set of gradients beside .grad, not two
            second, first = run_beside(lambda: self._half_with_gradients(unit[1], n_tokens),
                                       lambda: self._half_into_grad(unit[0], n_tokens), side_grad=True)
            _accumulate_gradients(self.params, second[3])
            return [(unit[0], *first), (unit[1], *second[:3])]
        loss, st, ent = self._loss(unit[0], n_tokens, ref_beside=self.beside)
        loss.backward()
        return [(unit[0], loss.detach(), st, ent)]

    def _half_with_gradients(self, k: int, n_tokens: float):
        """One half of a micro-batch on its own core: its loss, then its gradients (not yet in .grad)."""
        loss, st, ent = self._loss(k, n_tokens, ref_beside=False)
        return loss.detach(), st, ent, torch.autograd.grad(loss, self.params, allow_unused=True)

    def _half_into_grad(self, k: int, n_tokens: float):
        """One half of a micro-batch on its own core: its loss, its gradients added into .grad."""
        loss, st, ent = self._loss(k, n_tokens, ref_beside=False)
        loss.backward()
        return loss.detach(), st, ent

    def _loss(self, k: int, n_tokens: float, ref_beside: bool):
        """Chunk k: log-probs -> `grpo_loss`. Returns its share of its minibatch's loss, its statistics and
        its entropy sum."""
        cfg, batch = self.cfg, self.padded[k]
        comp = batch.loss_mask  # [b, Lc]
        policy = lambda: completion_logprobs(self.model, batch, cfg.temperature, self.use_bf16,  # noqa: E731
                                             with_entropy=True, lean=cfg.lean_forward)
        if self.ref_logps[k] is None and cfg.beta > 0 and ref_beside:  # computed beside the policy's forward
            self.ref_logps[k], (logp, ent) = run_beside(lambda: self.reference(batch), policy)
        else:
            if self.ref_logps[k] is None and cfg.beta > 0:
                with torch.no_grad():
                    self.ref_logps[k] = self.reference(batch)
            logp, ent = policy()
        old = self.old_logps[k] if self.old_logps[k] is not None else logp.detach()
        loss, st = grpo_loss(logp, old, self.advantages[self.chunks[k]], comp, ref_logp=self.ref_logps[k],
                             beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             aggregation=cfg.aggregation, max_tokens=cfg.max_new_tokens, n_seqs=self.minibatch,
                             n_tokens=n_tokens, engine_logp=batch.engine_logp, tis_cap=cfg.tis_cap)
        if batch.engine_logp is not None:  # sums over tokens, like the entropy's
            st.update({f"mismatch_{n}": v for n, v in rollout_mismatch(old, batch.engine_logp, comp).items()})
        return loss, st, float((ent.detach() * comp).sum())


def _add_chunk_stats(totals: dict, st: dict, ent: float, here: float) -> None:
    """Add one chunk's statistics into the update's sums (token-weighted by its `here` loss tokens)."""
    totals["kl"] += float(st["kl"]) * here
    totals["clip_fraction"] += float(st["clip_fraction"]) * here
    totals["entropy"] += ent
    for name in ("mismatch_abs_logp_diff", "mismatch_kl"):
        if name in st:
            totals[name] = totals.get(name, 0.0) + float(st[name])
    if "tis_weight" in st:
        totals["tis_weight"] = totals.get("tis_weight", 0.0) + float(st["tis_weight"]) * here


def _update_stats(totals: dict, n_updates: int, n_tok: float, d) -> dict:
    """The update's statistics: means per optimizer step (loss, grad norm) and per token over every process."""
    n_tok = max(all_reduce_sum(n_tok, d), 1.0)
    out = {"loss": totals["loss"] / n_updates, "kl": all_reduce_sum(totals["kl"], d) / n_tok,
           "clip_fraction": all_reduce_sum(totals["clip_fraction"], d) / n_tok,
           "entropy": all_reduce_sum(totals["entropy"], d) / n_tok, "grad_norm": totals["grad_norm"] / n_updates}
    # the sampling engine against pi_old, per token (logged when the engine reports log-probs: vllm)
    for name, key in (("mismatch_abs_logp_diff", "mismatch/mean_abs_logp_diff"), ("mismatch_kl", "mismatch/kl"),
                      ("tis_weight", "tis/weight_mean")):
        if name in totals:
            out[key] = all_reduce_sum(totals[name], d) / n_tok
    return out


def _draws_random_numbers(model) -> bool:
    """Whether a training forward of `model` draws random numbers (dropout that is on)."""
    if not model.training:
        return False
    if float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any((isinstance(m, torch.nn.Dropout) and m.p > 0) or (isinstance(m, SeededDropoutLinear) and m.dropout_p > 0)
               for m in model.modules())


def _accumulate_gradients(params: list, grads) -> None:
    """Add `grads` (one per parameter, None where a parameter took no part) into the parameters' .grad."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


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
