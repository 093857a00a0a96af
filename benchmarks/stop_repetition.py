"""What `eval.stop_repetition` saves: one model evaluated with it off (the paper's protocol) and on, in
interleaved rounds (off, on, off, on, ...), same problems, seeds and settings.

    python benchmarks/stop_repetition.py --model DIR [--benchmark synthetic] [--data-path DIR] [--limit 200]
        [--prompt tags_brief] [--max-new-tokens 900] [--n 1] [--rounds 2] [--batch-size 64] [--threads N]

Prints one JSON object (one line): per setting and round, tokens generated, wall seconds, accuracy, truncation,
repetition and repetition-stopped rates, mean / p95 response tokens; and `saved`: the fraction of
generated tokens and of wall time that stopping loops saved (medians over rounds), and the accuracy
change (a loop that would have ended in a right answer is a loss).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--benchmark", default="synthetic")
    ap.add_argument("--data-path")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--prompt", default="tags_brief")
    ap.add_argument("--max-new-tokens", type=int, default=900)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()

    import torch

    from srlm.config import DatasetRef, EvalConfig
    from srlm.engines import EngineOptions, build_engine
    from srlm.evaluate import evaluate
    from srlm.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"n": args.limit, "seed": 0} if args.benchmark == "synthetic" else {}
    ref = DatasetRef(name=args.benchmark, split="test", path=args.data_path,
                     limit=None if options else args.limit, options=options)
    model, tok = load_model(args.model, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    engine, _ = build_engine("hf", EngineOptions(model=str(args.model), batch_size=args.batch_size),
                             loaded=(model, tok))
    keys = ("accuracy", "truncation_rate", "repetition_rate", "repetition_stopped_rate", "tokens_generated",
            "mean_response_tokens", "p95_response_tokens")
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting in ("off", "on"):
                cfg = EvalConfig(benchmarks=[ref], prompt=args.prompt, n=args.n, temperature=args.temperature,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                 stop_repetition=setting == "on")
                t0 = time.perf_counter()
                s = evaluate(engine, tok, cfg, Path(tmp) / f"{setting}{r}", args.model, progress=False)
                wall = time.perf_counter() - t0
                b = s["benchmarks"][args.benchmark]
                runs[setting].append({"wall_seconds": round(wall, 2), **{k: b[k] for k in keys}})
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("tokens_generated", "wall_seconds", "accuracy")}
           for k, v in runs.items()}
    print(json.dumps({
        "model": args.model, "benchmark": args.benchmark, "problems": args.limit, "n": args.n,
        "max_new_tokens": args.max_new_tokens, "prompt": args.prompt, "device": str(engine.device),
        "runs": runs,
        "saved": {"tokens": round(1 - med["on"]["tokens_generated"] / max(1, med["off"]["tokens_generated"]), 4),
                  "wall": round(1 - med["on"]["wall_seconds"] / med["off"]["wall_seconds"], 4),
                  "accuracy_change": round(med["on"]["accuracy"] - med["off"]["accuracy"], 4)},
    }))


if __name__ == "__main__":
    main()
