"""Stage kind `distill`, logit-level distillation (`run_distill`): the student matches a teacher's
next-token distributions.

Where sequence-level KD (stage kind `kd`: SFT on teacher traces) sees one sampled token per position, this stage sees
the teacher's whole distribution at every position: forward KL, reverse KL or the generalised JSD of GKD
(Agarwal et al., 2024), at a temperature, optionally mixed with cross-entropy on the training tokens.

- off-policy: the positions are those of the dataset's responses (prompt + reference completion);
- on-policy (`on_policy` = GKD's lambda): on that fraction of steps the student samples the completions
  itself (HFEngine) and the teacher scores them, so the student learns on the states it actually visits.

The loop is `supervised.train_supervised`; this module brings the loss (teacher forward + divergence) and the
on-policy rollout. Teacher and student must share a tokenizer: position t's distributions are only
comparable if token id k means the same string to both, so that is checked before anything runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from srlm.data.collate import IGNORE_INDEX, TokenizedExample, filter_by_length, tokenize_pair
from srlm.data.prepare import completion_for
from srlm.data.prompts import completion_end, render_prompt, stop_token_ids
from srlm.data.sources import load_stage_records
from srlm.errors import UserError
from srlm.models import apply_lora, load_model
from srlm.train.losses import kd_loss, linear_kd_loss
from srlm.train.output_layer import plain_head
from srlm.train.supervised import loss_positions, selected_hidden, selected_logits, train_supervised


@dataclass
class PromptedExample(TokenizedExample):
    """A tokenised example that remembers where its prompt ends, so the student can answer it itself."""

    prompt_len: int = 0


# ------------------------------------------------------------------------------------------ vocabulary


def shared_vocab_width(student, student_tok, teacher, teacher_tok, n_samples: int = 256) -> int:
    """Check that teacher and student share a tokenizer; return how many logit columns to compare.

    Same tokenizer size, same special tokens, and the same token string for a spread of ids (evenly
    spaced plus the last ones, where added tokens live). Models may pad their embedding matrices past the
    tokenizer (Qwen2.5 0.5B has 151,936 rows, 7B 152,064, one tokenizer of 151,665): the logits are then
    compared on the first min(V_student, V_teacher) ids, which covers every real token.
    """
    n_s, n_t = len(student_tok), len(teacher_tok)
    if n_s != n_t:
        raise UserError(f"kd: teacher and student tokenizers differ in size ({n_t} vs {n_s} tokens); logit-level "
                        f"distillation needs one shared vocabulary (use sequence-level KD on teacher traces instead)")
    ids = sorted(set(range(0, n_s, max(1, n_s // n_samples))) | set(range(max(0, n_s - 64), n_s)))
    ts, tt = student_tok.convert_ids_to_tokens(ids), teacher_tok.convert_ids_to_tokens(ids)
    bad = [(i, a, b) for i, a, b in zip(ids, ts, tt) if a != b]
    if bad:
        i, a, b = bad[0]
        raise UserError(f"kd: teacher and student tokenizers map ids differently ({len(bad)} of {len(ids)} "
                        f"sampled ids; e.g. id {i} is {b!r} for the teacher, {a!r} for the student)")
    for attr in ("eos_token_id", "pad_token_id"):
        if getattr(student_tok, attr) != getattr(teacher_tok, attr):
            raise UserError(f"kd: teacher and student tokenizers disagree on {attr} "
                            f"({getattr(teacher_tok, attr)} vs {getattr(student_tok, attr)})")
    v_s = student.get_output_embeddings().weight.shape[0]
    v_t = teacher.get_output_embeddings().weight.shape[0]
    if min(v_s, v_t) < n_s:
        raise UserError(f"kd: a model's output layer ({min(v_s, v_t)} rows) is smaller than the tokenizer ({n_s})")
    return min(v_s, v_t)


# ---------------------------------------------------------------------------------------------- loss


def make_distill_loss(teacher, cfg, width: int):
    """The step loss of `train_supervised`: teacher and student logits at the loss positions only."""

    def step_loss(model, batch: dict, normalizer: float):
        keep, targets = loss_positions(batch["labels"])  # [B, T], [N]
        heads = plain_head(model), plain_head(teacher)
        if None not in heads:  # the output layers in chunks of positions: never [N, V] logits at once
            with torch.no_grad():
                teacher_hidden = selected_hidden(teacher, batch, keep)  # [N, Et]
            return linear_kd_loss(selected_hidden(model, batch, keep), heads[0], teacher_hidden, heads[1], width,
                                  targets, cfg.divergence, cfg.beta, cfg.temperature, cfg.ce_weight, normalizer)
        student = selected_logits(model, batch, keep)[:, :width]  # [N, V]
        with torch.no_grad():
            teacher_logits = selected_logits(teacher, batch, keep)[:, :width]  # [N, V]
        return kd_loss(student, teacher_logits, targets, cfg.divergence, cfg.beta, cfg.temperature,
                       cfg.ce_weight, normalizer)

    return step_loss


# ----------------------------------------------------------------------------------------- on-policy


def make_rollout(model, tok, cfg, rank: int):
    """On a `cfg.on_policy` fraction of steps, replace each completion by one the student samples.

    Whether a step is on-policy and the sampling seed are functions of (seed, step, rank), so a resumed
    run and every process agree without communication.
    """
    from srlm.engines import EngineOptions, build_engine
    from srlm.engines.base import SamplingParams

    # the student being trained decodes its own samples: the hf engine on the live module
    engine, _ = build_engine("hf", EngineOptions(model="student", batch_size=max(1, cfg.batch_size)),
                             loaded=(model, tok))
    stops = tuple(stop_token_ids(tok))

    def rollout(step: int, micro_batches: list[list[PromptedExample]]):
        if random.Random(cfg.seed * 7919 + step).random() >= cfg.on_policy:
            return micro_batches, {"on_policy": 0.0}
        sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                                  n=1, stop_token_ids=stops, seed=cfg.seed * 1_000_003 + step * 1009 + rank)
        flat = [e for mb in micro_batches for e in mb]
        outs = engine.generate([e.input_ids[:e.prompt_len] for e in flat], sampling)
        made, n_new = [], 0
        for e, (c,) in zip(flat, outs):
            prompt = e.input_ids[:e.prompt_len]
            completion = c.token_ids or [stops[0]]  # an empty sample still teaches where to stop
            prompt_labels = prompt if cfg.loss_on == "all" else [IGNORE_INDEX] * len(prompt)
            made.append(PromptedExample(prompt + completion, prompt_labels + completion, e.prompt_len))
            n_new += len(completion)
        it = iter(made)
        regrouped = [[next(it) for _ in mb] for mb in micro_batches]
        return regrouped, {"on_policy": 1.0, "sample_tokens_mean": n_new / max(1, len(flat))}

    return rollout


# ---------------------------------------------------------------------------------------------- stage


def distill_examples(tok, records: list[dict], prompt: str, loss_on: str) -> list[PromptedExample]:
    end = completion_end(tok)
    out = []
    for r in records:
        p = render_prompt(tok, prompt, r["question"])
        ex = tokenize_pair(tok, p, completion_for(r) + end, loss_on)
        out.append(PromptedExample(ex.input_ids, ex.labels, len(tok.encode(p, add_special_tokens=False))))
    return out


def run_distill(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """Distil `cfg.teacher` into the model at `model_dir`; writes `out_dir/checkpoint` like `run_sft`."""
    if not cfg.teacher:
        raise UserError("distill: set `teacher` to the teacher model's folder or hub id")
    model, tok = load_model(model_dir, device, dtype="float32")
    teacher, teacher_tok = load_model(cfg.teacher, device, dtype="auto")
    width = shared_vocab_width(model, tok, teacher, teacher_tok)
    teacher.eval().requires_grad_(False)
    records = load_stage_records(cfg.data)
    kept, report = filter_by_length(distill_examples(tok, records, cfg.prompt, cfg.loss_on), cfg.max_length)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, tok)
    rollout = None
    if cfg.on_policy > 0:
        from srlm.train.distributed import init_distributed

        rollout = make_rollout(model, tok, cfg, init_distributed(device).rank)
    summary = train_supervised(model, tok, kept, cfg, out_dir, device, progress, desc="distill",
                               step_loss=make_distill_loss(teacher, cfg, width), rollout=rollout)
    summary["data"] = {"n_records": len(records), "n_too_long": report.n_too_long, "n_examples": len(kept)}
    summary["teacher"] = str(cfg.teacher)
    return summary
