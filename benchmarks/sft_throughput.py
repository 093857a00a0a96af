"""SFT throughput of srlm's supervised loop on the shared benchmark workload; prints one JSON object.

The workload of ../shared/bench/README.md (the same one TRL's SFTTrainer runs in ../shared/bench/trl_sft.py):
the tiny model from make_tiny.py, batches of 32 chat-formatted pairs
  user `What is {a} + {b}? Show your reasoning.`
  assistant `<think>We add {a} and {b}. {a} + {b} = {a+b}.</think> <answer>{a+b}</answer>`
with a, b uniform in 1..999 (seed 0), learning rate 1e-4, loss on all tokens, fp32 on CPU. The figure is
real (unpadded) training tokens per second of the median step, the first step excluded (warm-up).

    python benchmarks/sft_throughput.py --model /tmp/tiny-qwen [--steps 12] [--batch 32] [--packing] [--compile]

`--compile` compiles the decoder layers (`SRLM_COMPILE=1` in real runs): its one-time compilation is in the
first step, which the median leaves out, and in `total_s`, which does not.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def workload(tok, n: int = 2048, seed: int = 0):
    """The benchmark's examples, tokenised as the chat template renders the whole conversation."""
    from srlm.data.collate import TokenizedExample

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        messages = [{"role": "user", "content": f"What is {a} + {b}? Show your reasoning."},
                    {"role": "assistant",
                     "content": f"<think>We add {a} and {b}. {a} + {b} = {a + b}.</think> <answer>{a + b}</answer>"}]
        ids = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
        out.append(TokenizedExample(ids, list(ids)))  # loss on all tokens
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder (make_tiny.py output)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--packing", action="store_true", help="pack examples into rows instead of padding")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    ap.add_argument("--bf16", action="store_true", help="bf16_autocast: true (bf16 matrix products on a CPU with bf16)")
    args = ap.parse_args()

    from srlm.config import SFTConfig
    from srlm.models import load_model
    from srlm.files import read_metrics
    from srlm.train.supervised import train_supervised

    device = torch.device("cpu")
    model, tok = load_model(args.model, device, dtype="float32")
    examples = workload(tok)
    cfg = SimpleNamespace(**SFTConfig(steps=args.steps, batch_size=args.batch, lr=1e-4, loss_on="all",
                                      warmup_ratio=0.0, max_length=1024, packing=args.packing,
                                      compile=args.compile, bf16_autocast=args.bf16 or None).model_dump())
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        train_supervised(model, tok, examples, cfg, Path(out), device, progress=False, desc="bench")
        total = time.perf_counter() - t0
        steps = read_metrics(Path(out) / "metrics.jsonl")
    timed = steps[1:] or steps
    median_s = statistics.median(s["seconds"] for s in timed)
    tokens = statistics.median(s["tokens"] for s in timed)
    print(json.dumps({
        "benchmark": "sft_throughput", "steps": args.steps, "batch": args.batch, "packing": args.packing,
        "compile": args.compile, "bf16": args.bf16,
        "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in timed), 1),
        "median_step_s": round(median_s, 4), "tokens_per_step": tokens,
        "final_loss": round(steps[-1]["loss"], 4), "losses": [round(s["loss"], 4) for s in steps],
        "total_s": round(total, 2), "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
