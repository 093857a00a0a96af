"""Evaluation: benchmarks x sampling settings -> per-sample records + a summary per benchmark.

Every (problem, sample) becomes one line of `OUT/<benchmark>/samples.jsonl`, appended (and fsynced) as
soon as all samples of its problem are done; a re-run reads what is there and generates only what is
missing, so an interrupted evaluation loses at most the sequences in flight. Each problem samples from its
own seed (from the run's seed and its index in the benchmark), so a resumed run reproduces the uninterrupted
one. `OUT/eval_settings.json` records the model, engine and protocol: a re-run with different ones is
refused instead of mixing samples (`overwrite=True` starts afresh). `OUT/summary.json` holds accuracy (mean
pass@1) with its standard error, pass@k, format rate (null unless the prompt asks for the <think>/<answer>
tags), extraction rate, accuracy by extraction method, the grader audit (srlm's and math-verify's accuracies
and their agreement; the samples they differ on in `grader_disagreements.jsonl`), how responses ended (truncation and
repetition-loop rates), response tokens (mean, p95), time and the full settings.

Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) rank r takes problems i % world == r and appends
to `samples.rank{r}.jsonl`; after a barrier rank 0 merges the shards into `samples.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from srlm import __version__
from srlm.data.prompts import (EVAL_TEMPLATES, FORMAT_PROMPTS, benchmark_template, cut_at_stop, eval_stop_strings,
                               fewshot_draw, render_eval_prompt, stop_token_ids)
from srlm.data.sources import exact_answers, load_records
from srlm.engines.base import Completion, SamplingParams, prompt_seeds
from srlm.errors import UserError
from srlm.faults import fault_point
from srlm.grading import grade
from srlm.grading.audit import accuracy_by_method, disagreements, grader_audit
from srlm.grading.symbolic import math_verify_equal
from srlm.repetition import ends_in_loop
from srlm.stats import accuracy_summary
from srlm.files import atomic_write_json

# Below this extraction rate a benchmark's accuracy is not a measurement of reasoning but of format: the
# report marks it with the paper's dagger instead of printing a bare number.
MIN_EXTRACTION_RATE = 0.1
SETTINGS_FILE = "eval_settings.json"
SAMPLES_FILE = "samples.jsonl"
DISAGREEMENTS_FILE = "grader_disagreements.jsonl"
# EvalConfig fields that decide what is sampled; `batch_size` only decides how fast, so it may change
# between an interrupted run and its resumption.
PROTOCOL_FIELDS = ("prompt", "n", "temperature", "top_p", "max_new_tokens", "seed")
# Protocol fields added later: stamped only when they differ from their default, so an evaluation folder
# written before they existed still resumes.
LATER_PROTOCOL_FIELDS = {"benchmark_prompts": {}, "num_fewshot": 0, "stop_repetition": False, "dtype": None}
# Problems go to the engine this many batches at a time: enough for continuous batching to keep its
# batch full, few enough that the finished completions an engine returns stay small in memory.
CHUNK_BATCHES = 8


def grader_version() -> str | None:
    import srlm.grading

    return getattr(srlm.grading, "GRADER_VERSION", None)


# ------------------------------------------------------------------------------------------ sample files


_REPORTED_DAMAGE: set[tuple[str, int]] = set()  # (file, line) already warned about in this process


def read_samples(path: Path) -> list[dict]:
    """Completed sample records. A damaged line (cut short by a kill, or edited) is skipped and reported
    once; the lines after it still count, so a re-run regenerates only the damaged line's problem."""
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "id" not in record or "sample" not in record:
                raise ValueError("not a sample record")
            out.append(record)
        except ValueError:
            if line.strip() and (str(path), number) not in _REPORTED_DAMAGE:
                _REPORTED_DAMAGE.add((str(path), number))
                _warn(f"{path}:{number}: damaged line skipped (its problem is sampled again if missing)")
    return out


def _append_lines(path: Path, records: list[dict]) -> None:
    """Append whole lines in one write and fsync: after a crash the file ends at a problem boundary (or
    mid-line, which `read_samples` drops and `_truncate_to_complete_lines` cuts)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _write_lines(path: Path, records: list[dict]) -> None:
    """Replace `path` with `records`, one JSON line each, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _truncate_to_complete_lines(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)


def shard_files(bench_dir: Path) -> list[Path]:
    return sorted(bench_dir.glob("samples.rank*.jsonl"))


def all_samples(bench_dir: Path) -> list[dict]:
    """Samples of the merged file and of any rank shard, first occurrence of each (id, sample) kept.

    Shards are read before the merged file: a merge writes the merged file before deleting the shards, so
    in this order a concurrent merge can never hide a sample."""
    shards = [s for p in shard_files(bench_dir) for s in read_samples(p)]
    seen, out = set(), []
    for s in read_samples(bench_dir / SAMPLES_FILE) + shards:
        key = (s["id"], s["sample"])
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def merge_shards(bench_dir: Path, records: list[dict]) -> list[dict]:
    """Fold every `samples.rank*.jsonl` into `samples.jsonl` (ordered by problem, then sample; samples of
    problems outside `records` kept after them), atomically, then delete the shards."""
    shards = shard_files(bench_dir)
    samples = all_samples(bench_dir)
    if not shards:
        return samples
    order = {r["id"]: i for i, r in enumerate(records)}
    samples.sort(key=lambda s: (order.get(s["id"], len(order)), s["sample"]))
    tmp = bench_dir / f".{SAMPLES_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, bench_dir / SAMPLES_FILE)
    for p in shards:
        p.unlink(missing_ok=True)
    return samples


# ------------------------------------------------------------------------------------------ processes


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    """Wait for every rank. Uses the launcher's process group, or creates a gloo one (CPU, no GPU needed)
    with a long timeout: ranks can finish their shards hours apart."""
    if world()[1] <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(days=2))
    dist.barrier()


# ------------------------------------------------------------------------------------------ settings


def settings_stamp(cfg, model_name: str, engine_name: str) -> dict:
    """What must be equal for samples to be mixed: model, engine and the sampling protocol."""
    protocol = {k: getattr(cfg, k) for k in PROTOCOL_FIELDS}
    protocol.update({k: getattr(cfg, k) for k, default in LATER_PROTOCOL_FIELDS.items() if getattr(cfg, k) != default})
    return {"model": model_name, "engine": engine_name, "protocol": protocol, "benchmarks": {}}


def _benchmark_stamp(ref) -> dict:
    return {"split": ref.split, "options": ref.options}


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return out


def _read_settings(out_dir: Path) -> dict | None:
    path = Path(out_dir) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def settings_conflicts(out_dir: Path, stamp: dict, benchmarks: list) -> list[str]:
    """How `stamp` differs from the settings of the evaluation already in `out_dir` (empty: none there,
    or the same). Cheap, so the command checks it before loading a model."""
    old = _read_settings(out_dir)
    if old is None:
        return []
    keys = ("model", "engine", "protocol")
    problems = _diff({k: old.get(k) for k in keys}, {k: stamp[k] for k in keys})
    for ref in benchmarks:
        if ref.name in old.get("benchmarks", {}):
            problems += _diff(old["benchmarks"][ref.name], _benchmark_stamp(ref), f"{ref.name}.")
    return problems


def protocol_conflicts(out_dir: Path, cfg) -> list[str]:
    """How the engine, protocol and benchmark options of `cfg` (an EvalConfig) differ from those of the
    evaluation in `out_dir`, whatever its model: what `srlm run` checks before any stage runs."""
    old = _read_settings(out_dir)
    if old is None:
        return []
    stamp = settings_stamp(cfg, old.get("model"), getattr(cfg, "engine", old.get("engine")))
    return settings_conflicts(out_dir, stamp, cfg.benchmarks)


def record_model_name(out_dir: Path, model_name: str) -> None:
    """Record that the evaluation in `out_dir` is of `model_name` (the same checkpoint, found at another
    path: a run folder that was moved or copied)."""
    old = _read_settings(out_dir)
    if old is not None and old.get("model") != model_name:
        atomic_write_json(Path(out_dir) / SETTINGS_FILE, {**old, "model": model_name})


def check_settings(out_dir: Path, stamp: dict, benchmarks: list, overwrite: bool) -> None:
    """Refuse to mix samples of another model/engine/protocol into `out_dir`; with `overwrite`, discard
    every evaluation in it first. Records the settings for the next run."""
    rank, _ = world()
    old = _read_settings(out_dir)
    if overwrite:
        old = None
        if rank == 0:
            for p in [*out_dir.glob("*/samples*.jsonl"), out_dir / "summary.json", out_dir / SETTINGS_FILE]:
                p.unlink(missing_ok=True)
    else:
        problems = settings_conflicts(out_dir, stamp, benchmarks)
        if problems:
            raise UserError(f"{out_dir} holds an evaluation with other settings ({'; '.join(problems)}); "
                            f"use another output folder, or --overwrite to discard it")
    merged = {**stamp, "benchmarks": {**((old or {}).get("benchmarks", {})),
                                      **{ref.name: _benchmark_stamp(ref) for ref in benchmarks}}}
    if rank == 0:
        atomic_write_json(out_dir / SETTINGS_FILE, merged)


# ------------------------------------------------------------------------------------------ evaluation


def _warn(message: str) -> None:
    print(f"srlm: warning: {message}", file=sys.stderr, flush=True)


def response_budget(cfg, engine, prompt_lengths: list[int], name: str) -> int:
    """`cfg.max_new_tokens`, capped so the longest prompt plus its response fits the model's context
    (with a warning). Computed over the whole benchmark, so a resumed run gets the same budget."""
    ctx = getattr(engine, "max_context", None)
    if ctx is None or not prompt_lengths:
        return cfg.max_new_tokens
    room = ctx - max(prompt_lengths)
    if room < 1:
        raise UserError(f"{name}: the longest prompt has {max(prompt_lengths)} tokens, more than the model's "
                        f"context of {ctx}")
    if room < cfg.max_new_tokens:
        _warn(f"{name}: max_new_tokens {cfg.max_new_tokens} does not fit the model's context of {ctx} tokens "
              f"after the longest prompt ({max(prompt_lengths)} tokens); using {room}")
        return room
    return cfg.max_new_tokens


def _record(r: dict, j: int, prompt: str, c: Completion, benchmark: str, stop: tuple[str, ...] = (),
            fewshot: list[str] | None = None, audit: bool = False) -> dict:
    text = cut_at_stop(c.text, stop)  # the harness's stop strings end the response; they are not part of it
    g = grade(text, r["answer"], exact=exact_answers(benchmark))
    out = {"id": r["id"], "sample": j, "prompt": prompt, "response": text, "extracted": g.extracted,
           "method": g.method, "gold": r["answer"], "correct": g.correct, "format_ok": g.format_ok,
           "tokens": c.tokens_generated, "finish_reason": c.finish_reason}
    if audit:  # the grader audit: a second grader's verdict beside srlm's (srlm.grading.audit)
        out["math_verify"] = math_verify_equal(r["answer"], text)
    if fewshot:
        out["fewshot"] = fewshot
    return out


def fewshot_examples(template: str, ref, records: list[dict], cfg) -> list[list[dict]]:
    """Each problem's few-shot examples (`cfg.num_fewshot` of them when the template draws any), drawn from
    the template's split of the same dataset by `fewshot_draw` (seeded by `cfg.seed` and the problem index)."""
    t = EVAL_TEMPLATES.get(template)
    if t is None or t.fewshot_split is None or cfg.num_fewshot == 0:
        return [[] for _ in records]
    pool = load_records(ref.name, split=t.fewshot_split, path=ref.path)
    return [[pool[k] for k in fewshot_draw(len(pool), cfg.num_fewshot, cfg.seed, i)] for i in range(len(records))]


def evaluate_benchmark(engine, tokenizer, ref, cfg, out_dir: Path, progress: bool = True) -> dict:
    """Evaluate one benchmark (a DatasetRef) with `engine`; returns its summary."""
    rank, size = world()
    records = load_records(ref.name, split=ref.split, path=ref.path, limit=ref.limit, **ref.options)
    bench_dir = Path(out_dir) / ref.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    out_path = bench_dir / (SAMPLES_FILE if size == 1 else f"samples.rank{rank}.jsonl")
    _truncate_to_complete_lines(out_path)
    done = {(s["id"], s["sample"]) for s in all_samples(bench_dir)}
    template = benchmark_template(cfg.prompt, ref.name, cfg.benchmark_prompts)
    stop = eval_stop_strings(tokenizer, template)
    shots = fewshot_examples(template, ref, records, cfg)
    prompts = [render_eval_prompt(tokenizer, template, r, s) for r, s in zip(records, shots)]
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    sampling = SamplingParams(max_new_tokens=response_budget(cfg, engine, [len(x) for x in ids], ref.name),
                              temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.n,
                              stop_token_ids=tuple(stop_token_ids(tokenizer)), stop_strings=stop,
                              stop_repetition=cfg.stop_repetition)
    todo = [i for i, r in enumerate(records) if i % size == rank
            and any((r["id"], j) not in done for j in range(cfg.n))]
    in_process = hasattr(engine, "memory_estimate") and bool(todo)  # the hf engine: its memory is this process's
    if in_process:
        from srlm.memory import peak_memory_gb, reset_peak_memory  # torch: only with an in-process engine

        print(engine.memory_estimate(f"eval {ref.name}", [len(ids[i]) for i in todo for _ in range(cfg.n)],
                                     sampling.max_new_tokens), file=sys.stderr, flush=True)
        reset_peak_memory(engine.device)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"eval {ref.name}", unit="problem", disable=not progress, leave=False)

    seeds = prompt_seeds(cfg.seed, len(records))  # problem i's seed, whichever process or run draws it
    chunk = max(1, CHUNK_BATCHES * cfg.batch_size // cfg.n)
    written: list[int] = []  # problems written by this call
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]

        def write(k: int, group: list[Completion], part=part) -> None:  # problem part[k] is complete
            r = records[part[k]]
            fewshot = [ex["id"] for ex in shots[part[k]]]
            _append_lines(out_path, [_record(r, j, prompts[part[k]], c, ref.name, stop, fewshot, cfg.grader_audit)
                                     for j, c in enumerate(group) if (r["id"], j) not in done])
            bar.update(1)
            written.append(part[k])
            fault_point("eval", after_problem=len(written), benchmark=ref.name)

        engine.generate([ids[i] for i in part], sampling, seeds=[seeds[i] for i in part], on_complete=write)
    bar.close()
    wall = time.perf_counter() - t0
    barrier()  # every shard is written
    if rank == 0:  # also folds in the shards of an earlier, interrupted multi-process run
        merge_shards(bench_dir, records)
    barrier()  # the merged file is in place
    samples = all_samples(bench_dir)
    summary = summarize(ref.name, records, samples, cfg, wall)
    if template not in FORMAT_PROMPTS:
        summary["format_rate"] = None  # n/a: this prompt never asked for the <think>/<answer> format
    if rank == 0 and summary["grader_audit"] is not None:
        _write_lines(bench_dir / DISAGREEMENTS_FILE, disagreements(samples))
    elif rank == 0:
        (bench_dir / DISAGREEMENTS_FILE).unlink(missing_ok=True)  # an earlier audited run's, now stale
    summary["dataset"] = {"split": ref.split, "path": ref.path, "limit": ref.limit, "options": ref.options}
    summary["max_new_tokens"] = sampling.max_new_tokens  # after the context cap
    # GiB this process held at most while it generated (hf engine; vLLM's and a server's memory are elsewhere)
    summary["peak_memory_gb"] = peak_memory_gb(engine.device) if in_process else None
    if not summary["complete"]:
        _warn(f"{ref.name}: the summary is incomplete: not every one of the {len(records)} problems has its "
              f"{cfg.n} samples in {bench_dir}")
    summary["prompt_template"] = template
    summary["stop_strings"] = list(stop)
    if any(shots):
        summary["fewshot"] = {"n": cfg.num_fewshot, "split": EVAL_TEMPLATES[template].fewshot_split,
                              "seed": cfg.seed, "per_sample": "samples.jsonl field `fewshot` (ids)"}
    return summary


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
        "n_records": len(records),
        "complete": all(len(group) == cfg.n for group in ordered),
        "format_rate": sum(s["format_ok"] for s in flat) / n,
        "extraction_rate": extraction_rate,
        "extraction_failure_rate": 1.0 - extraction_rate,
        "no_answer": extraction_rate < MIN_EXTRACTION_RATE,  # the paper's dagger
        **response_accounting(flat),
        "accuracy_by_method": accuracy_by_method(flat),
        "grader_audit": grader_audit(flat),
        "wall_seconds": wall_seconds,
    }


def response_accounting(samples: list[dict]) -> dict:
    """What the responses cost and how they ended (pure): truncated (hit max_new_tokens), ending in a
    repetition loop (`srlm.repetition`, whatever ended them), cut early by `eval.stop_repetition`; mean and
    95th-percentile (nearest rank) response tokens."""
    n = max(1, len(samples))
    tokens = sorted(s["tokens"] for s in samples)
    return {
        "truncation_rate": sum(s["finish_reason"] == "length" for s in samples) / n,
        "repetition_rate": sum(ends_in_loop(s["response"]) for s in samples) / n,
        "repetition_stopped_rate": sum(s["finish_reason"] == "repetition" for s in samples) / n,
        "tokens_generated": sum(tokens),
        "mean_response_tokens": sum(tokens) / n,
        "p95_response_tokens": tokens[math.ceil(0.95 * len(tokens)) - 1] if tokens else 0,
    }


def evaluate(engine, tokenizer, cfg, out_dir: Path, model_name: str, progress: bool = True,
             overwrite: bool = False, engine_name: str | None = None) -> dict:
    """Every benchmark of `cfg.benchmarks`; writes and returns `out_dir/summary.json`'s content.

    `summary.json` keeps the entries of benchmarks evaluated earlier into the same folder (same settings,
    which `check_settings` guarantees) next to this call's."""
    out_dir = Path(out_dir)
    engine_name = engine_name or getattr(engine, "name", type(engine).__name__)
    if cfg.stop_repetition and not getattr(engine, "stops_repetition", False):
        raise UserError(f"eval.stop_repetition: the {engine_name} engine cannot stop a repetition loop; use the "
                        f"hf engine or stop_repetition: false")
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, size = world()
    check_settings(out_dir, settings_stamp(cfg, model_name, engine_name), cfg.benchmarks, overwrite)
    barrier()  # settings checked (and an overwrite done) on every rank before any sample is written
    t0 = time.perf_counter()
    results = {}
    for ref in cfg.benchmarks:
        results[ref.name] = evaluate_benchmark(engine, tokenizer, ref, cfg, out_dir, progress)
    previous, previous_wall = {}, 0.0
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        try:
            old = json.loads(summary_path.read_text())
            previous, previous_wall = old.get("benchmarks", {}), float(old.get("wall_seconds") or 0.0)
        except (ValueError, TypeError):
            pass  # written atomically: only someone else's edit can damage it; it is rebuilt below
    for name, result in results.items():  # a re-run adds its time to the earlier runs' (tokens/s stays true)
        result["wall_seconds"] += float(previous.get(name, {}).get("wall_seconds") or 0.0)
        peaks = [p for p in (result["peak_memory_gb"], previous.get(name, {}).get("peak_memory_gb")) if p is not None]
        result["peak_memory_gb"] = max(peaks, default=None)  # the largest of the runs that generated
    summary = {"model": model_name, "engine": engine_name, "settings": cfg.model_dump(),
               "srlm_version": __version__, "grader_version": grader_version(), "world_size": size,
               "wall_seconds": previous_wall + time.perf_counter() - t0, "benchmarks": {**previous, **results}}
    if rank == 0:
        atomic_write_json(summary_path, summary)
    return summary
