"""`srlm tiny-model OUT_DIR`: write the tiny Qwen2-architecture model and its tokenizer."""

from __future__ import annotations


def register(sub) -> None:
    from srlm.tiny import TinySpec

    d = TinySpec()
    p = sub.add_parser("tiny-model", help="write a tiny random-init Qwen2 model + tokenizer to a folder",
                       description="A small Qwen2-architecture causal LM (random init, fixed seed) and a "
                                   "byte-level tokenizer with a chat template, loadable with AutoModelForCausalLM "
                                   "and AutoTokenizer.")
    p.add_argument("out_dir", help="folder to write (created)")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"hidden size (default {d.hidden})")
    p.add_argument("--layers", type=int, default=d.layers, help=f"layers (default {d.layers})")
    p.add_argument("--heads", type=int, default=d.heads, help=f"attention heads (default {d.heads})")
    p.add_argument("--kv-heads", type=int, default=d.kv_heads, help=f"key/value heads (default {d.kv_heads})")
    p.add_argument("--intermediate", type=int, default=d.intermediate, help=f"MLP size (default {d.intermediate})")
    p.add_argument("--max-positions", type=int, default=d.max_positions, help="context length")
    p.add_argument("--seed", type=int, default=d.seed, help="initialisation seed")
    p.set_defaults(func=run)


def run(args) -> int:
    from srlm.errors import UserError
    from srlm.tiny import TinySpec, write_tiny_model

    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise UserError("--hidden must be divisible by --heads, and --heads by --kv-heads")
    spec = TinySpec(args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.max_positions,
                    args.seed)
    out = write_tiny_model(args.out_dir, spec)
    import json

    n = json.loads((out / "config.json").read_text())
    print(f"wrote {out} (qwen2, hidden {n['hidden_size']}, {n['num_hidden_layers']} layers, "
          f"vocab {n['vocab_size']})")
    return 0
