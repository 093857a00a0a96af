"""Stage kind `sft`: fine-tune on (prompt, completion) pairs with `supervised.train_supervised`.

`sft_examples` renders each record's prompt with the stage's template and its completion (`completion_for`:
the paper's `<think>…</think>\\n<answer>…</answer>` format, or the reference solution as written), closed
by the end-of-turn marker. Sequence-level KD (`kd.py`) is this stage on teacher traces.
"""

from __future__ import annotations

from pathlib import Path

import torch

from srlm.data.collate import TokenizedExample, filter_by_length, tokenize_pair
from srlm.data.prepare import completion_for
from srlm.data.prompts import completion_end, render_prompt
from srlm.data.sources import load_stage_records
from srlm.models import apply_lora, load_model
from srlm.train.supervised import train_supervised


def sft_examples(tok, records: list[dict], prompt: str, loss_on: str, completion: str = "tags"
                 ) -> list[TokenizedExample]:
    """Chat-formatted prompt + completion (closed by the end-of-turn marker) per record, tokenised."""
    end = completion_end(tok)
    return [tokenize_pair(tok, render_prompt(tok, prompt, r["question"]), completion_for(r, completion) + end,
                          loss_on) for r in records]


def run_sft(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True,
            records: list[dict] | None = None, desc: str = "sft") -> dict:
    """Fine-tune on (prompt, completion) pairs; writes `out_dir/checkpoint`. `records` replaces `cfg.data`;
    `desc` names the stage kind (progress bar, fault point)."""
    model, tok = load_model(model_dir, device, dtype="float32")
    records = load_stage_records(cfg.data) if records is None else records
    examples = sft_examples(tok, records, cfg.prompt, cfg.loss_on, getattr(cfg, "completion", "tags"))
    kept, report = filter_by_length(examples, cfg.max_length)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, tok)
    summary = train_supervised(model, tok, kept, cfg, out_dir, device, progress, desc=desc)
    summary["data"] = {"n_records": len(records), "n_too_long": report.n_too_long, "n_examples": len(kept)}
    return summary
