"""The tiny Qwen2-architecture model and character tokenizer used by `srlm demo` and the tests.

The tokenizer is byte-level with no merges (character-level on ASCII), so any text round-trips exactly, with the
paper's four tags (`<think>`, `</think>`, `<answer>`, `</answer>`) and the chat markers as single tokens:
a tag is one decision for the model instead of seven characters, which makes format learning fast.
The folder it writes is a normal Hugging Face model folder: `AutoModelForCausalLM.from_pretrained(dir)`
and `AutoTokenizer.from_pretrained(dir)` load it with no custom code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

PAD, EOS, IM_START, IM_END = "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# The Qwen2.5 chat template's shape (ChatML), without its tool-calling parts.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model. Defaults: about 0.9M parameters, trains at CPU speed."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    max_positions: int = 1024
    seed: int = 0


def build_tokenizer():
    """A byte-level BPE tokenizer with no merges (so one token per byte: character-level on ASCII),
    the tags as single tokens, ChatML special tokens and a chat template.

    It is a `Qwen2Tokenizer`, the class transformers picks for any qwen2 model folder, so the folder loads
    back identically with `AutoTokenizer`. Byte-level means every string, Unicode included, round-trips.
    """
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {sym: i for i, sym in enumerate(byte_symbols)}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token=EOS, pad_token=PAD)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(spec: TinySpec, vocab_size: int, pad_id: int, eos_id: int):
    """A randomly initialised Qwen2ForCausalLM of the given shape (fixed seed, so reproducible)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(cfg)


def write_tiny_model(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write tokenizer and random-init model to `out_dir` (created); return the folder."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model = build_model(spec, len(tok), tok.pad_token_id, tok.eos_token_id)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "srlm_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out
