"""Generation throughput: srlm's `hf` engine against a plain `model.generate` loop (greedy, CPU or GPU).

    python benchmarks/generation.py [--model DIR] [--prompts 128] [--batch-size 16] [--max-new-tokens 96]
                                    [--threads N]

Prints one JSON object: generated tokens per second of each, and `speedup` = engine / plain loop (wall
time; `speedup_cpu_time` is the same ratio on process CPU time, steadier on a shared machine).

Why the model's weights are edited first: a random-init model decodes greedily into one repeated
character and never stops, so every row runs to `max_new_tokens` and there is nothing for an engine to
win. Real evaluation is the opposite: responses end at different lengths. Training the model until it does
that takes minutes of CPU, so instead its output layer is set by hand (a transparent stand-in for a
trained model): greedy decoding continues the alphabet `0-9a-zA-Z` from the prompt's last character and
then emits EOS, so a response's length (1 to 62 tokens, right-skewed like real ones) depends on its
prompt. The layers keep their random weights (scaled down so the bigram rule wins) and cost the same
arithmetic as before. Prompts also vary in length (a filler prefix). Both sides decode the same prompts,
in the same batches of the same size (the plain loop: one `generate` call per batch, in prompt order),
with the same `max_new_tokens` and the same stop tokens, greedily; the script checks their outputs agree.

Without `--model`, the model is built with `srlm.tiny` at the shape of `../shared/bench/make_tiny.py`
(hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 1024).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import tempfile
import time

import torch

CHAIN = string.digits + string.ascii_lowercase + string.ascii_uppercase  # the "alphabet" being continued
FILLER = "please "


def make_prompt(rng: random.Random) -> str:
    """A prompt of varied length ending in a character of CHAIN (where the response starts).

    Response lengths are right-skewed like real ones (most short, a few long): the length is
    1 + 61 * u**2 for u uniform, so the mean is about a third of the longest.
    """
    length = 1 + int((len(CHAIN) - 1) * rng.random() ** 2)
    return FILLER * rng.randint(0, 12) + "continue from " + CHAIN[len(CHAIN) - length]


@torch.no_grad()
def make_chain_model(model, tok, layer_scale: float = 0.05, strength: float = 20.0) -> None:
    """Edit `model` in place so greedy decoding continues CHAIN from the last token and ends with EOS.

    The output layer is untied from the embeddings and row `next(c)` set to the (normalised) embedding of
    `c`, so the logit of c's successor dominates when the final hidden state is close to c's embedding;
    the layers' output projections are scaled down so that it is.
    """
    ids = [tok.encode(c, add_special_tokens=False) for c in CHAIN]
    if any(len(i) != 1 for i in ids):
        raise SystemExit("the tokenizer must encode each of 0-9a-zA-Z as one token")
    ids = [i[0] for i in ids]
    emb = model.get_input_embeddings().weight  # [V, H]
    head = emb.detach().clone() * 0.1  # [V, H]
    unit = emb / emb.norm(dim=-1, keepdim=True)  # [V, H]
    successors = ids[1:] + [tok.eos_token_id]
    for cur, nxt in zip(ids, successors):
        head[nxt] = strength * unit[cur]
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.mul_(layer_scale)
        layer.mlp.down_proj.weight.mul_(layer_scale)
    model.eval()


def plain_loop(model, tok, prompts: list[list[int]], batch_size: int, max_new: int, stops: list[int]):
    """One `model.generate` call per batch, left padded, greedy; the generated token lists."""
    outs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros_like(ids)  # [B, T]
        for r, p in enumerate(batch):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tok.pad_token_id)
        for row in gen[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            outs.append(row[:cut])
    return outs


def engine_run(model, tok, prompts, batch_size: int, max_new: int, stops: list[int]):
    from srlm.engines import EngineOptions, build_engine
    from srlm.engines.base import SamplingParams

    engine, _ = build_engine("hf", EngineOptions(model="bench", batch_size=batch_size), loaded=(model, tok))
    sampling = SamplingParams(max_new_tokens=max_new, temperature=0.0, stop_token_ids=tuple(stops))
    return [group[0].token_ids for group in engine.generate(prompts, sampling)]


def timed(fn, *args) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process). CPU time is the steadier figure on a machine
    shared with other jobs; wall time is what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def load(model_dir: str | None):
    """(model, tokenizer, description); without a folder, the srlm.tiny model of make_tiny.py's shape."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        from srlm.tiny import TinySpec, write_tiny_model

        spec = TinySpec(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=1024)
        with tempfile.TemporaryDirectory(prefix="srlm-bench-") as tmp:
            model, tok, _ = load(str(write_tiny_model(tmp, spec)))
        return model, tok, f"srlm.tiny {spec}"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tok, model_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (e.g. make_tiny.py output); default: a srlm.tiny model")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); on a shared "
                                                   "machine 1 avoids thread oversubscription")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from srlm.data.prompts import stop_token_ids

    torch.manual_seed(args.seed)
    model, tok, model_dir = load(args.model)
    make_chain_model(model, tok)
    rng = random.Random(args.seed)
    prompts = [tok.encode(make_prompt(rng), add_special_tokens=False) for _ in range(args.prompts)]
    stops = stop_token_ids(tok)

    work = (model, tok, prompts, args.batch_size, args.max_new_tokens, stops)
    plain_s = engine_s = plain_cpu = engine_cpu = float("inf")
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts both sides alike; best of each
        plain_out, s, c = timed(plain_loop, *work)
        plain_s, plain_cpu = min(plain_s, s), min(plain_cpu, c)
        engine_out, s, c = timed(engine_run, *work)
        engine_s, engine_cpu = min(engine_s, s), min(engine_cpu, c)
    tokens, plain_tokens = sum(map(len, engine_out)), sum(map(len, plain_out))
    lengths = sorted(map(len, engine_out))
    print(json.dumps({
        "model": model_dir, "device": "cpu", "threads": torch.get_num_threads(),
        "prompts": args.prompts, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "completion_tokens": tokens, "completion_length_min_median_max":
            [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        "outputs_identical": plain_out == engine_out,
        "plain_generate_tokens_per_s": round(plain_tokens / plain_s, 1),
        "engine_tokens_per_s": round(tokens / engine_s, 1),
        "plain_generate_seconds": round(plain_s, 2), "engine_seconds": round(engine_s, 2),
        "speedup": round((tokens / engine_s) / (plain_tokens / plain_s), 2),
        "speedup_cpu_time": round((tokens / engine_cpu) / (plain_tokens / plain_cpu), 2),
    }))


if __name__ == "__main__":
    main()
