"""Evaluation: benchmarks x sampling settings -> per-sample records + a summary per benchmark.

Every (problem, sample) becomes one line of `OUT/<benchmark>/samples.jsonl`, appended as soon as its batch
is done; a re-run reads what is there and generates only what is missing, so an interrupted evaluation
loses at most the batch in flight. `OUT/summary.json` holds accuracy (mean pass@1) with its standard
error, pass@k, format and extraction rates, tokens, time and the full settings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from srlm import __version__
from srlm.data.prompts import render_prompt, stop_token_ids
from srlm.data.sources import load_records
from srlm.engines.base import SamplingParams
from srlm.grading import grade
from srlm.stats import accuracy_summary
from srlm.train.loop import atomic_write_json

# Below this extraction rate a benchmark's accuracy is not a measurement of reasoning but of format: the
# report marks it with the paper's dagger instead of printing a bare number.
MIN_EXTRACTION_RATE = 0.1


def read_samples(path: Path) -> list[dict]:
    """Completed sample records; a line cut short by a kill (the last one) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _append_lines(path: Path, records: list[dict]) -> None:
    """Append whole lines and fsync: after a crash the file ends at a batch boundary (or mid-line, which
    `read_samples` drops)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _truncate_to_complete_lines(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)


def evaluate_benchmark(engine, tokenizer, ref, cfg, out_dir: Path, progress: bool = True) -> dict:
    """Evaluate one benchmark (a DatasetRef) with `engine`; returns its summary."""
    records = load_records(ref.name, split=ref.split, path=ref.path, limit=ref.limit, **ref.options)
    bench_dir = Path(out_dir) / ref.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    samples_path = bench_dir / "samples.jsonl"
    _truncate_to_complete_lines(samples_path)
    done = {(s["id"], s["sample"]) for s in read_samples(samples_path)}
    prompts = {r["id"]: render_prompt(tokenizer, cfg.prompt, r["question"]) for r in records}
    max_new = cfg.max_new_tokens
    limit = getattr(getattr(engine, "model", None), "config", None)
    ctx = getattr(limit, "max_position_embeddings", None)
    todo = [r for r in records if any((r["id"], j) not in done for j in range(cfg.n))]
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"eval {ref.name}", unit="problem", disable=not progress, leave=False)
    chunk = max(1, cfg.batch_size // cfg.n)
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        ids = [tokenizer.encode(prompts[r["id"]], add_special_tokens=False) for r in batch]
        room = max_new if ctx is None else max(1, min(max_new, ctx - max(len(x) for x in ids)))
        sampling = SamplingParams(max_new_tokens=room, temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.n,
                                  stop_token_ids=tuple(stop_token_ids(tokenizer)),
                                  seed=cfg.seed * 1_000_003 + start)
        outs = engine.generate(ids, sampling)
        lines = []
        for r, group in zip(batch, outs):
            for j, c in enumerate(group):
                if (r["id"], j) in done:
                    continue
                g = grade(c.text, r["answer"], benchmark=ref.name)
                lines.append({"id": r["id"], "sample": j, "prompt": prompts[r["id"]], "response": c.text,
                              "extracted": g.extracted, "method": g.method, "gold": r["answer"],
                              "correct": g.correct, "format_ok": g.format_ok, "tokens": len(c.token_ids),
                              "finish_reason": c.finish_reason})
        _append_lines(samples_path, lines)
        bar.update(len(batch))
    bar.close()
    wall = time.perf_counter() - t0
    return summarize(ref.name, records, read_samples(samples_path), cfg, wall)


def summarize(name: str, records: list[dict], samples: list[dict], cfg, wall_seconds: float) -> dict:
    """The summary of one benchmark from its sample records (pure)."""
    by_id: dict[str, list[dict]] = {}
    for s in samples:
        by_id.setdefault(s["id"], []).append(s)
    ordered = [sorted(by_id.get(r["id"], []), key=lambda s: s["sample"])[: cfg.n] for r in records]
    acc = accuracy_summary([[s["correct"] for s in group] for group in ordered if group])
    flat = [s for group in ordered for s in group]
    n = max(1, len(flat))
    extraction_rate = sum(s["extracted"] is not None for s in flat) / n
    return {
        "benchmark": name,
        **acc,
        "format_rate": sum(s["format_ok"] for s in flat) / n,
        "extraction_rate": extraction_rate,
        "extraction_failure_rate": 1.0 - extraction_rate,
        "no_answer": extraction_rate < MIN_EXTRACTION_RATE,  # the paper's dagger
        "truncation_rate": sum(s["finish_reason"] == "length" for s in flat) / n,
        "tokens_generated": sum(s["tokens"] for s in flat),
        "mean_response_tokens": sum(s["tokens"] for s in flat) / n,
        "wall_seconds": wall_seconds,
    }


def evaluate(engine, tokenizer, cfg, out_dir: Path, model_name: str, progress: bool = True) -> dict:
    """Every benchmark of `cfg.benchmarks`; writes and returns `out_dir/summary.json`'s content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for ref in cfg.benchmarks:
        results[ref.name] = evaluate_benchmark(engine, tokenizer, ref, cfg, out_dir, progress)
    from srlm.grading import GRADER_VERSION

    summary = {"model": model_name, "settings": cfg.model_dump(), "srlm_version": __version__,
               "grader_version": GRADER_VERSION, "benchmarks": results}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
