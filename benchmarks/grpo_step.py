"""GRPO step time on the workload of ../shared/bench/README.md, to compare with TRL's GRPOTrainer.

Workload: the bench's tiny model (make_tiny.py), B chat-formatted `What is a + b?` prompts per step,
G completions each, exactly L new tokens (B, G, L from the environment as for the bench's trl_grpo.py;
default 4, 8, 64), temperature 1, beta 0.04 (reference model on), epsilon 0.2, one update per generation
batch, lr 1e-5, reward len(set(text)) / 10.

    [B=4 G=8 L=64] python benchmarks/grpo_step.py [--model DIR] [--steps 8] [--no-lean-forward] [--bf16]

Prints one JSON object: median seconds per step over the steps after the first, and its split into
generate / score / train. Not a test: timings depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench"


def ensure_model(path: str | None) -> Path:
    if path:
        return Path(path)
    out = Path(tempfile.gettempdir()) / "srlm-bench-tiny-qwen"
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, str(BENCH / "make_tiny.py"), str(out)], check=True)
    return out


def write_prompts(folder: Path, n: int = 256) -> Path:
    rng = random.Random(0)
    path = folder / "add.jsonl"
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            f.write(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: build ../shared/bench/make_tiny.py's model)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-lean-forward", dest="lean_forward", action="store_false",
                    help="grpo.lean_forward: false (training passes through the transformers forward)")
    ap.add_argument("--bf16", action="store_true", help="bf16_autocast: true (bf16 matrix products on a CPU with bf16)")
    ap.add_argument("--micro-batch-tokens", type=int,
                    help="grpo.micro_batch_tokens (default: the memory budget's, about 1 GiB of activations on CPU)")
    args = ap.parse_args()

    import torch

    from srlm.config import DatasetRef, GRPOConfig
    from srlm.data.sources import register_custom
    from srlm.grading.rewards import REWARDS
    from srlm.train.grpo import run_grpo
    from srlm.files import read_metrics

    model = ensure_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="srlm-grpo-bench-"))
    register_custom("bench_add", write_prompts(work), question_field="question", answer_field="answer")
    REWARDS["variety"] = lambda text, gold: len(set(text)) / 10.0  # the bench's reward
    prompts, group, new_tokens = (int(os.environ.get(k, v)) for k, v in (("B", 4), ("G", 8), ("L", 64)))
    cfg = GRPOConfig(
        data=DatasetRef(name="bench_add"), prompt="bare", steps=args.steps, prompts_per_step=prompts,
        group_size=group, max_new_tokens=new_tokens, min_new_tokens=new_tokens, stop=[], temperature=1.0,
        top_p=1.0, beta=0.04, epsilon=0.2, lr=1e-5, rewards=["variety"], micro_batch_size=max(32, prompts * group),
        collapse={"enabled": False},
        lean_forward=args.lean_forward, bf16_autocast=args.bf16 or None, micro_batch_tokens=args.micro_batch_tokens,
    )
    run_grpo(cfg, model, work / "out", torch.device("cpu"), progress=False)
    m = read_metrics(work / "out" / "metrics.jsonl")[1:]
    med = lambda k: statistics.median(x[k] for x in m)  # noqa: E731
    print(json.dumps({
        "workload": f"grpo {prompts}x{group}, {new_tokens} new tokens, beta 0.04",
        "model": str(model), "steps": args.steps, "lean_forward": args.lean_forward, "bf16": args.bf16,
        "threads": torch.get_num_threads(),
        "micro_batch_tokens": args.micro_batch_tokens, "median_step_s": round(med("seconds/step"), 4),
        "generate_s": round(med("seconds/generate"), 4), "score_s": round(med("seconds/score"), 4),
        "train_s": round(med("seconds/train"), 4),
        "completion_len_mean": m[-1]["completion_len_mean"],
    }))


if __name__ == "__main__":
    main()
