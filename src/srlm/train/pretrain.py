"""Stage kind `pretrain`: plain language modelling on question + reference solution text, loss on every
token, with `supervised.train_supervised`."""

from __future__ import annotations

from pathlib import Path

import torch

from srlm.data.collate import TokenizedExample, filter_by_length
from srlm.data.sources import load_stage_records
from srlm.models import load_model
from srlm.train.supervised import train_supervised


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
