"""The tiny model folder loads with Auto classes; its tokenizer round-trips the task's text exactly."""

import pytest

from srlm.tiny import TAG_TOKENS, TinySpec, build_tokenizer, write_tiny_model


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize("text", [
    "<think>12 + 7 = 19\n19 * 3 = 57</think>\n<answer>57</answer>",
    "48/2 = 24 -5 (3^2) 1,000 0.25 $\\frac{1}{2}$ x−y ≤ 3 °C",
    "  leading and trailing spaces \t tabs \n\n",
    "<answer></answer><think></think>",
])
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tags_are_single_tokens(tok):
    for tag in TAG_TOKENS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1


def test_chat_template(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_folder_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = TinySpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    out = write_tiny_model(tmp_path / "m", spec)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
    assert tok.decode(tok.encode("<think>1+1</think>")) == "<think>1+1</think>"
    # same seed, same weights
    again = AutoModelForCausalLM.from_pretrained(write_tiny_model(tmp_path / "m2", spec))
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert (a == b).all(), n


def test_merges_make_the_task_words_single_tokens_and_keep_digits_apart(tok):
    text = "Ned has 128 eggs. Ned gives away 5. How many eggs does Ned have?\n128 - 5 = 123 eggs.\n#### 123"
    pieces = tok.tokenize(text)
    for word in ("Ned", "Ġhas", "Ġeggs", "Ġgives", "Ġaway", "ĠHow", "Ġmany", "Ġdoes", "Ġhave", "####"):
        assert word in pieces
    digits = [c for c in text if c.isdigit()]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == digits  # one token per digit
    assert len(pieces) < len(text) / 2  # what makes the demo's sequences short


def test_tokenizer_is_the_same_on_every_build(tok):
    again = build_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
