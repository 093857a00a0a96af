"""The tiny Qwen2-architecture model and its small BPE tokenizer, used by `srlm demo` and the tests.

The tokenizer is byte-level BPE with merges learned from the synthetic task, so any text round-trips exactly, with
the paper's four tags (`<think>`, `</think>`, `<answer>`, `</answer>`) and the chat markers as single tokens:
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


# The text the tokenizer's merges are learned from: synthetic training problems (their own seed, so no
# split's content is special) and the instructions the prompts add. Learning merges takes ~0.3 s.
MERGES_CORPUS = {"problems": 3000, "seed": 97}
MAX_VOCAB = 512  # bytes + learned merges; the task's whole vocabulary of words fits well within it
SPEC_FILE = "srlm_tiny.json"  # written last into a tiny model folder: its presence means the folder is whole


def merges_corpus() -> list[str]:
    """The texts whose byte-pair statistics decide the merges (deterministic: seeded problems)."""
    from srlm.data.prompts import BOXED_INSTRUCTION, TAG_INSTRUCTION, TAG_INSTRUCTION_BRIEF
    from srlm.data.synthetic import make_split

    texts = [f"{r['question']}\n{r['solution']}" for r in make_split("train", MERGES_CORPUS["problems"],
                                                                      seed=MERGES_CORPUS["seed"])]
    instructions = [TAG_INSTRUCTION, TAG_INSTRUCTION_BRIEF, BOXED_INSTRUCTION, "user", "assistant", "system"]
    for text in instructions:
        for tag in TAG_TOKENS:  # the tags are whole tokens already: no merges spent on their pieces
            text = text.replace(tag, " ")
        texts.extend([text] * 100)  # as frequent as it is in training prompts
    return texts


def build_tokenizer():
    """A byte-level BPE tokenizer whose merges are learned from the synthetic task's text, with the tags
    as single tokens, ChatML special tokens and a chat template.

    It is a `Qwen2Tokenizer` (the class transformers picks for any qwen2 model folder, so the folder loads
    back identically with `AutoTokenizer`) and splits text the way Qwen's does: digits one at a time,
    words with their leading space. The learned merges make the task's words single tokens, so a
    problem and its solution take ~2.7 characters per token instead of one: every stage of the demo
    runs over that many fewer positions. Byte-level means every string, Unicode included, round-trips.
    The merges are a pure function of the corpus, so the tokenizer is the same on every machine.
    """
    import json

    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    plain = Qwen2Tokenizer(vocab={sym: i for i, sym in enumerate(byte_symbols)}, merges=[], unk_token=None)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = plain.backend_tokenizer.pre_tokenizer  # Qwen's split, then bytes -> symbols
    trainer = trainers.BpeTrainer(vocab_size=MAX_VOCAB, initial_alphabet=byte_symbols, show_progress=False)
    learner.train_from_iterator(merges_corpus(), trainer)
    learned = learner.get_vocab()
    vocab = {sym: i for i, sym in enumerate(byte_symbols)}  # bytes keep ids 0-255
    for sym in sorted(set(learned) - set(vocab), key=learned.__getitem__):
        vocab[sym] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(learner.to_str())["model"]["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token=EOS, pad_token=PAD)
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
    """Write tokenizer and random-init model to `out_dir` (replaced whole); return the folder.

    Written into a temporary folder and renamed into place, with `srlm_tiny.json` last: a kill leaves the
    old folder or none, and `is_complete_tiny_model` tells a complete folder from a half-written one."""
    import json
    import shutil

    from srlm.faults import fault_point
    from srlm.files import replace_folder

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tok = build_tokenizer()
    model = build_model(spec, len(tok), tok.pad_token_id, tok.eos_token_id)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(tmp)
    fault_point("start_model:mid_write")
    tok.save_pretrained(tmp)
    (tmp / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    replace_folder(tmp, out)
    return out


def is_complete_tiny_model(folder: str | Path, spec: TinySpec) -> bool:
    """Whether `folder` holds the whole tiny model of `spec` (its spec file is written last)."""
    import json

    path = Path(folder) / SPEC_FILE
    try:
        return json.loads(path.read_text()) == asdict(spec)
    except (OSError, ValueError):
        return False
