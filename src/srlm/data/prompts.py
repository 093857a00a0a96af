"""Prompt templates, selectable by name, and chat formatting through the tokenizer's own template.

A template turns a question into chat messages. Models with a chat template (Instruct models, the tiny
model) get it applied by their tokenizer; models without one (base checkpoints) get a plain
`Question:/Answer:` rendering, so the same template works for both.
"""

from __future__ import annotations

from typing import Callable

from srlm.data.prepare import TAG_INSTRUCTION

# The same request in one line, for small-context models: it is repeated in every prompt of every rollout,
# and the tiny demo model pays for each character.
TAG_INSTRUCTION_BRIEF = "Reason in <think></think>, answer in <answer></answer>."
# The common zero-shot prompt of math evaluation harnesses (Qwen2.5-Math, LightEval's math tasks).
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def tags_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": f"{question}\n{TAG_INSTRUCTION}"}]


def tags_brief_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": f"{question}\n{TAG_INSTRUCTION_BRIEF}"}]


def boxed_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": f"{question}\n{BOXED_INSTRUCTION}"}]


def bare_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


PROMPTS: dict[str, Callable[[str], list[dict]]] = {
    "tags": tags_prompt,
    "tags_brief": tags_brief_prompt,
    "boxed": boxed_prompt,
    "bare": bare_prompt,
}


def get_prompt(name: str) -> Callable[[str], list[dict]]:
    from srlm.errors import UserError

    if name not in PROMPTS:
        raise UserError(f"unknown prompt template {name!r}; choose one of {sorted(PROMPTS)}")
    return PROMPTS[name]


def render_prompt(tokenizer, template: str, question: str) -> str:
    """The exact text the model is conditioned on, ending where the answer starts."""
    messages = get_prompt(template)(question)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_render(messages)


def plain_render(messages: list[dict]) -> str:
    """Rendering for tokenizers without a chat template (base models)."""
    parts = []
    for m in messages:
        role = {"system": "", "user": "Question: ", "assistant": "Answer: "}[m["role"]]
        parts.append(role + m["content"])
    return "\n\n".join(parts) + "\n\nAnswer: "


def completion_end(tokenizer) -> str:
    """What closes an assistant turn: the chat template's end-of-turn marker, else the EOS token.

    Derived from the template itself (render a turn, see what follows its content) so it is right for
    ChatML (`<|im_end|>`), Llama-3 (`<|eot_id|>`) and others alike.
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return eos
    mark = "\x00srlm-mark\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}], tokenize=False
    )
    tail = text.split(mark, 1)[1] if mark in text else ""
    end = tail.strip()
    return end if end else eos


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end generation: EOS plus the end-of-turn token when it is a single token."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    end = completion_end(tokenizer)
    end_ids = tokenizer.encode(end, add_special_tokens=False) if end else []
    if len(end_ids) == 1:
        ids.append(int(end_ids[0]))
    return sorted(set(ids))
