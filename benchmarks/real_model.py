"""Peak memory and speed of srlm on a real pretrained model (SmolLM2-135M-Instruct); prints one JSON object.

    python benchmarks/real_model.py [--model models/smollm2-135m-instruct] [--only eval,sft_full,...]

Each workload runs in its own process, so each peak RSS (`ru_maxrss`) is that workload's alone:
- eval: `srlm eval` on the first 64 GSM8K test problems, one batch of 64, the paper's sampling
  (temperature 0.6, top-p 0.95), at most 256 new tokens -> `eval_peak_gb`, `eval_tokens_per_s` (with
  `--kv-cache-gb`, as many rows at once as that KV cache holds; with `--dtype bfloat16`, bf16 weights and
  cache) -> also `eval_accuracy` and `eval_format_rate`, to compare dtypes;
- sft_full / sft_lora: SFT on GSM8K train in the <think>/<answer> format, batches of 8, at most 512 tokens,
  LoRA r 16 with the paper's dropout 0.05, 3 steps, micro-batches left to the default token budget
  (`micro_batch_tokens`) -> `sft_full_peak_gb`, `sft_lora_peak_gb`, `sft_tokens_per_s` (full, median step
  after the first);
- grpo: 4 GSM8K prompts x 4 samples x exactly 256 new tokens, the bench's varied reward, beta 0.04, micro-batches
  left to the default token budget, 2 steps -> `grpo_peak_gb`, `grpo_step_s` (the last step).
- gen (and gen_vllm with `--vllm-python`, vLLM's CPU build in its own virtual environment): 8 GSM8K
  prompts x 4 samples x exactly 64 new tokens, temperature 1 -> `gen_tokens_per_s`, `vllm_tokens_per_s`
  (the generate call's wall time; vLLM's engine start-up excluded), alternated `--rounds` times.
Timings depend on the machine and its load; compare side by side with ../shared/bench (TRL) in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORKLOADS = ("eval", "sft_full", "sft_lora", "grpo", "gen")


def gen_prompts(model: Path) -> list[list[int]]:
    """The generation workload's prompts: the first 8 GSM8K test questions, chat-formatted, as token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    rows = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[:8]]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False) for r in rows]


def run_gen(model: Path, dtype: str) -> dict:
    import torch

    from srlm.engines import EngineOptions, build_engine
    from srlm.engines.base import SamplingParams
    from srlm.models import load_model

    lm, tok = load_model(model, torch.device("cpu"), dtype=dtype)
    engine, _ = build_engine("hf", EngineOptions(model=str(model), batch_size=32), loaded=(lm.eval(), tok))
    sampling = SamplingParams(max_new_tokens=64, min_new_tokens=64, temperature=1.0, n=4, seed=0)
    t0 = time.perf_counter()
    out = engine.generate(gen_prompts(model), sampling)
    wall = time.perf_counter() - t0
    return {"gen_tokens_per_s": round(sum(len(c.token_ids) for g in out for c in g) / wall, 1)}


def run_gen_vllm(model: Path, dtype: str) -> dict:
    """vLLM's CPU build on the same prompts (imports only vllm: runs in vLLM's own environment)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm

    llm = vllm.LLM(model=str(model), dtype=dtype, seed=0, max_model_len=1024, enforce_eager=True,
                   enable_chunked_prefill=False, gpu_memory_utilization=0.05, kv_cache_memory_bytes=1 << 30)
    prompts = [{"prompt_token_ids": p} for p in gen_prompts(model)]
    params = vllm.SamplingParams(n=4, temperature=1.0, max_tokens=64, min_tokens=64, seed=0)
    t0 = time.perf_counter()
    out = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    return {"vllm_tokens_per_s": round(sum(len(c.token_ids) for r in out for c in r.outputs) / wall, 1)}


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB on Linux


def run_eval(model: Path, work: Path, kv_cache_gb: float | None, dtype: str) -> dict:
    from srlm.cli import main

    out = work / "eval"
    budget = ["--kv-cache-gb", str(kv_cache_gb)] if kv_cache_gb else []
    t0 = time.perf_counter()
    code = main(["eval", "--model", str(model), "--data-path", str(DATA), "--benchmarks", "gsm8k", "--limit", "64",
                 "--batch-size", "64", "--max-new-tokens", "256", "--out", str(out), "--no-progress", "--dtype", dtype,
                 *budget])
    wall = time.perf_counter() - t0
    assert code == 0
    samples = [json.loads(x) for x in (out / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    tokens = sum(s["tokens"] for s in samples)
    return {"eval_peak_gb": round(peak_gb(), 2), "eval_tokens_per_s": round(tokens / wall, 1),
            "eval_tokens": tokens, "eval_wall_s": round(wall, 1),
            "eval_accuracy": round(sum(s["correct"] for s in samples) / len(samples), 4),
            "eval_format_rate": round(sum(s["format_ok"] for s in samples) / len(samples), 4)}


def run_sft(model: Path, work: Path, lora: bool) -> dict:
    import torch

    from srlm.config import DatasetRef, SFTConfig
    from srlm.files import read_metrics
    from srlm.train.sft import run_sft as sft

    cfg = SFTConfig(data=DatasetRef(name="gsm8k", split="train", path=str(DATA), limit=64), steps=3, batch_size=8,
                    max_length=512, lr=1e-5, lora={"enabled": lora, "dropout": 0.05})
    sft(cfg, model, work / "sft", torch.device("cpu"), progress=False)
    steps = read_metrics(work / "sft" / "metrics.jsonl")
    key = "sft_lora" if lora else "sft_full"
    return {f"{key}_peak_gb": round(peak_gb(), 2),
            f"{key}_tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in steps[1:]), 1)}


def run_grpo(model: Path, work: Path) -> dict:
    import torch

    from srlm.config import DatasetRef, GRPOConfig
    from srlm.train.grpo import run_grpo as grpo
    from srlm.files import read_metrics

    from srlm.grading.rewards import REWARDS

    # the bench's reward (../shared/bench): varied, so every step trains (the paper's rewards give this
    # instruct model, which never writes the tags, all-zero advantages: its updates would be skipped)
    REWARDS["variety"] = lambda text, gold: len(set(text)) / 10.0
    cfg = GRPOConfig(data=DatasetRef(name="gsm8k", split="train", path=str(DATA), limit=64), steps=2,
                     prompts_per_step=4, group_size=4, max_new_tokens=256, min_new_tokens=256, beta=0.04,
                     rewards=["variety"], collapse={"enabled": False})
    grpo(cfg, model, work / "grpo", torch.device("cpu"), progress=False)
    m = read_metrics(work / "grpo" / "metrics.jsonl")
    return {"grpo_peak_gb": round(peak_gb(), 2), "grpo_step_s": round(m[-1]["seconds/step"], 2),
            "grpo_generate_s": round(m[-1]["seconds/generate"], 2), "grpo_train_s": round(m[-1]["seconds/train"], 2)}


def child(name: str, model: Path, kv_cache_gb: float | None = None, dtype: str = "float32",
          threads: int | None = None) -> dict:
    if name == "gen_vllm":
        return run_gen_vllm(model, dtype)
    from srlm.cpu import apply_threads
    from srlm.memory import return_freed_memory

    return_freed_memory()  # as training stages do for a model of this size (srlm.memory)
    threads = apply_threads(threads)  # default: the cores free now, as `srlm run` / `srlm eval` do
    with tempfile.TemporaryDirectory(prefix=f"srlm-real-{name}-") as tmp:
        work = Path(tmp)
        if name == "eval":
            out = run_eval(model, work, kv_cache_gb, dtype)
        elif name in ("sft_full", "sft_lora"):
            out = run_sft(model, work, lora=name == "sft_lora")
        elif name == "gen":
            out = run_gen(model, dtype)
        else:
            out = run_grpo(model, work)
    return {**out, f"{name}_threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"), help="model folder")
    ap.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    ap.add_argument("--vllm-python", help="python of a virtual environment with vLLM's CPU build (gen workload)")
    ap.add_argument("--rounds", type=int, default=1, help="alternations of srlm and vLLM generation")
    ap.add_argument("--kv-cache-gb", type=float, help="eval: `srlm eval --kv-cache-gb` (default: all 64 rows at once)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="eval and gen: weights dtype (srlm's and vLLM's alike)")
    ap.add_argument("--threads", type=int, help="srlm's torch threads (default: the cores free at each workload's "
                    "start, as `srlm run` picks them; vLLM's CPU build uses every core)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.model), args.kv_cache_gb, args.dtype, args.threads)))
        return

    def in_child(name: str, python: str = sys.executable) -> dict:
        env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src"))}
        if name == "gen_vllm":
            env.pop("PYTHONPATH")  # vLLM's environment has its own transformers; srlm is not imported there
        budget = ["--kv-cache-gb", str(args.kv_cache_gb)] if args.kv_cache_gb and name == "eval" else []
        if name in ("eval", "gen", "gen_vllm"):
            budget += ["--dtype", args.dtype]
        if args.threads and name != "gen_vllm":
            budget += ["--threads", str(args.threads)]
        done = subprocess.run([python, __file__, "--model", args.model, "--child", name, *budget], capture_output=True,
                              text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        part = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({"workload": name, **part}), file=sys.stderr, flush=True)  # as each one finishes
        return part

    result: dict = {"model": args.model, "dtype": args.dtype, "load_avg_1m": round(os.getloadavg()[0], 2)}
    for name in args.only.split(","):
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {WORKLOADS}")
        if name != "gen":
            result.update(in_child(name))
            continue
        rounds = [(in_child("gen"), in_child("gen_vllm", args.vllm_python) if args.vllm_python else {})
                  for _ in range(args.rounds)]  # alternated: both see the same host load
        result["gen_tokens_per_s_rounds"] = [a["gen_tokens_per_s"] for a, _ in rounds]
        result["gen_threads_rounds"] = [a["gen_threads"] for a, _ in rounds]
        result["gen_tokens_per_s"] = statistics.median(result["gen_tokens_per_s_rounds"])
        if args.vllm_python:
            result["vllm_tokens_per_s_rounds"] = [b["vllm_tokens_per_s"] for _, b in rounds]
            result["vllm_tokens_per_s"] = statistics.median(result["vllm_tokens_per_s_rounds"])
    if "sft_full_tokens_per_s" in result:
        result["sft_tokens_per_s"] = result["sft_full_tokens_per_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
