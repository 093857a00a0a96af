"""Decode-step time of the lean forward with each way it can hold the weights: fused copies packed by MKL,
fused copies with plain products, and the model's own weights (in place, no copy).

    python benchmarks/decode_step.py [--model DIR] [--rows 32] [--width 96] [--rounds 4]

Runs one decode step (every row adds one token to a `width`-column cache) many times, alternating the
kinds so that all see the same machine state, and prints one JSON object with the median microseconds per
step of each and which one the lean forward picks for this model by default (`IN_PLACE_MIN_PARAMS`).
Default model: ../shared/bench/make_tiny.py's (the GRPO bench's). Not a test: timings depend on the
machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_step import ensure_model  # noqa: E402  (the bench model, built on demand)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: build ../shared/bench/make_tiny.py's model)")
    ap.add_argument("--rows", type=int, default=32, help="rows decoded together (the bench: 4 prompts x 8)")
    ap.add_argument("--width", type=int, default=96, help="cached tokens per row before the step")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per round and kind")
    args = ap.parse_args()

    import torch

    import srlm.engines.lean as lean
    from srlm.models import load_model

    model_dir = ensure_model(args.model)
    model, _ = load_model(model_dir, torch.device("cpu"), dtype="float32")
    available = lean.MKL_PACKING  # this build's answer, before the runs below switch it off and on
    model.eval()
    vocab = model.config.vocab_size
    b, w = args.rows, args.width
    ids = torch.randint(0, vocab, (b, w))
    mask = torch.ones(b, w + 1, dtype=torch.long)
    positions = torch.arange(w)[None].expand(b, -1)
    step_ids, step_pos = torch.randint(0, vocab, (b, 1)), torch.full((b, 1), w)

    def time_steps(kind: str) -> float:
        lean.MKL_PACKING = kind == "packed" and available
        forward = lean.LeanForward(model, in_place=kind == "in_place")
        cache = forward.new_cache()
        forward(ids, mask[:, :w], positions, cache)
        width = cache.layers[0].width

        def step():
            for layer in cache.layers:  # the same step again: forget the column the last one wrote
                layer.width = width
            forward(step_ids, mask, step_pos, cache)

        for _ in range(10):
            step()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        return (time.perf_counter() - t) / args.steps * 1e6

    runs: dict[str, list[float]] = {"packed": [], "plain": [], "in_place": []}
    for _ in range(args.rounds):
        for kind, times in runs.items():
            times.append(time_steps(kind))
    median = {kind: statistics.median(times) for kind, times in runs.items()}
    print(json.dumps({
        "model": str(model_dir), "rows": b, "width": w, "threads": torch.get_num_threads(),
        "mkl_packing_available": available, "default": "in_place" if lean.decodes_in_place(model) else "fused",
        **{f"{kind}_step_us": round(us, 1) for kind, us in median.items()},
        "speedup": round(median["plain"] / median["packed"], 3),
        "in_place_vs_plain": round(median["plain"] / median["in_place"], 3),
    }))


if __name__ == "__main__":
    main()
