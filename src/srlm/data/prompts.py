"""Prompt templates, selectable by name, and chat formatting through the tokenizer's own template.

A template turns a question into chat messages. Models with a chat template (Instruct models, the tiny
model) get it applied by their tokenizer; models without one (base checkpoints) get a plain
`Question:/Answer:` rendering, so the same template works for both.

Evaluation can also use `EVAL_TEMPLATES`: the task prompts of an evaluation harness, written from the
whole benchmark record (OlympiadBench's answer type and unit), with few-shot examples and stop strings.
`eval.prompt: lighteval` picks LightEval's template for each benchmark (`LIGHTEVAL_SUITES`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

from srlm.data.prepare import TAG_INSTRUCTION

# The same request in one line, for small-context models: it is repeated in every prompt of every rollout,
# and the tiny demo model pays for each character.
TAG_INSTRUCTION_BRIEF = "Reason in <think></think>, answer in <answer></answer>."
# Qwen2.5-Math's chain-of-thought instruction (also DeepSeek-R1's recommendation for math). It is NOT
# LightEval's: LightEval's math tasks ask for "Therefore, the final answer is: $\boxed{ANSWER}$..." (0.8-0.12)
# or a final line "ANSWER: $ANSWER" (0.13); those are the `lighteval_*` templates below.
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


# The templates whose instruction asks for the paper's `<think>…</think><answer>…</answer>` format: only
# their evaluations report a format rate (any other prompt never asked for it).
FORMAT_PROMPTS = frozenset({"tags", "tags_brief"})


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


# ------------------------------------------------------------------------------------ evaluation templates
# Written by hand from LightEval's source at the tags named in each `reproduces`; the tests compare every
# rendering with the text worked out from that source.

# lighteval 0.8.0-0.12.2, `default_prompts.math_500` and `aime_prompt_fn` (the same text): what open-r1
# ran (pinned lighteval commit d3da6b9b, May 2025) and so the paper's period. Two spaces after "clearly.".
LIGHTEVAL_MATH = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{question}")
# lighteval 0.13.0, `tasks/tasks/math_500.py`: a final line `ANSWER: $ANSWER` instead of a box.
LIGHTEVAL_MATH_013 = (
    "Solve the following problem. The final line of your response MUST be of the following format:\n"
    "\"ANSWER: $ANSWER\" (without quotes) where $ANSWER is the final answer. Think step by step before "
    "answering.\n\n{question}")
# English answer types of lighteval's OlympiadBench task (`extended/olympiade_bench`, 0.8.0-0.13.0).
OLYMPIAD_ANSWER_TYPES = {"Numerical": "a numerical value", "Expression": "an expression",
                         "Equation": "an equation", "Interval": "an interval"}


def _fill(template: str, question: str) -> str:
    return template.replace("{question}", question)  # not str.format: questions hold braces


def lighteval_math_query(record: dict) -> str:
    return _fill(LIGHTEVAL_MATH, record["question"])


def lighteval_math_013_query(record: dict) -> str:
    return _fill(LIGHTEVAL_MATH_013, record["question"])


def lighteval_aime_013_query(record: dict) -> str:
    # 0.13.0 `tasks/tasks/aime.py` builds the 0.12 text with `dedent` and no `strip`: one newline each side.
    return "\n" + _fill(LIGHTEVAL_MATH, record["question"]) + "\n"


def lighteval_gsm8k_query(record: dict) -> str:
    return f"Question: {record['question']}\nAnswer:"


def lighteval_gsm8k_target(record: dict) -> str:
    # The few-shot answer is the whole GSM8K solution, calculator notes and `#### N` line included.
    return f" {record['solution']}"


def _olympiad_single_type(answer_type: str) -> str:
    for name, text in OLYMPIAD_ANSWER_TYPES.items():
        if name in answer_type:
            return text
    from srlm.errors import UserError

    raise UserError(f"OlympiadBench answer type {answer_type!r} is none of {', '.join(OLYMPIAD_ANSWER_TYPES)}, "
                    "Tuple (the types lighteval's prompt knows)")


def olympiad_answer_type_text(answer_type: str, multiple: bool) -> str:
    """lighteval's sentence about the answer's type; none for tuples (lighteval: their meaning varies)."""
    if "Tuple" in answer_type or "Need_human_evaluate" in answer_type:
        return ""
    if not multiple:
        return f"The answer of The problem should be {_olympiad_single_type(answer_type)}. "
    types = [_olympiad_single_type(t) for t in answer_type.split(",")]
    if len(set(types)) == 1:
        return f"The problem has multiple answers, each of them should be {types[0]}. "
    return f"The problem has multiple answers, with the answers in order being {', '.join(types)}. "


def olympiadbench_query(record: dict) -> str:
    """OlympiadBench's official instruction (English, open-ended, math) as lighteval writes it, then the
    question. Answer type, unit and multiple answers come from the record's fields."""
    meta = record.get("meta") or {}
    multiple = bool(meta.get("is_multiple_answer"))
    box = "\\boxed{multiple answers connected with commas}" if multiple else "\\boxed{answer}"
    unit_text = ""
    if meta.get("unit"):
        box += "(unit)"
        unit_text = ", note that the unit of the answer should not be included in \\boxed{}"
    type_text = olympiad_answer_type_text(str(meta.get("answer_type") or ""), multiple)
    instruction = (f"The following is an open-ended problem from an International Math competition. {type_text}"
                   "Please calculate the answer according to the given requirements and the information "
                   "provided. Please use LaTeX format to represent the variables and formulas used in the "
                   f"solution process and results. Please end your solution with \"So the final answer is {box}.\" "
                   f"and give the result explicitly{unit_text}.")
    return instruction + "\n" + record["question"]


@dataclass(frozen=True)
class EvalTemplate:
    """A benchmark's prompt as an evaluation harness writes it.

    `query` makes the user turn from the whole record; with `fewshot_split`, `eval.num_fewshot` examples
    from that split come first as user (`query`) / assistant (`target`) turns. Generation of a plain
    (no chat template) prompt also stops at `stop`, cut from the response before grading, as the harness
    does (`eval_stop_strings`)."""

    query: Callable[[dict], str]
    reproduces: str
    fewshot_split: str | None = None
    target: Callable[[dict], str] | None = None
    stop: tuple[str, ...] = ()


EVAL_TEMPLATES: dict[str, EvalTemplate] = {
    "lighteval_math": EvalTemplate(
        lighteval_math_query, "lighteval 0.8.0-0.12.2 math_500 and aime24 (default_prompts.py)"),
    "lighteval_math_0.13": EvalTemplate(
        lighteval_math_013_query, "lighteval 0.13.0 math_500 (tasks/tasks/math_500.py)"),
    "lighteval_aime_0.13": EvalTemplate(
        lighteval_aime_013_query, "lighteval 0.13.0 aime24 (tasks/tasks/aime.py)"),
    # 0.8.0 stopped at "Question=" instead; 0.9.0 onwards (open-r1's pin included) at "Question:".
    "lighteval_gsm8k": EvalTemplate(
        lighteval_gsm8k_query, "lighteval 0.9.0-0.13.0 gsm8k (default_prompts.gsm8k, task `lighteval|gsm8k`)",
        fewshot_split="train", target=lighteval_gsm8k_target, stop=("Question:",)),
    "lighteval_olympiadbench": EvalTemplate(
        olympiadbench_query, "lighteval 0.8.0-0.13.0 olympiad_bench:OE_TO_maths_en_COMP (extended suite)"),
}

# `eval.prompt: lighteval` (the paper's period, what open-r1 ran) and `lighteval-0.13`: each benchmark's
# template. LightEval has no Minerva-Math or AMC23 task: both get the MATH-500 prompt, srlm's choice.
LIGHTEVAL_SUITES: dict[str, dict[str, str]] = {
    "lighteval": {"gsm8k": "lighteval_gsm8k", "math500": "lighteval_math", "aime24": "lighteval_math",
                  "olympiadbench": "lighteval_olympiadbench", "minerva_math": "lighteval_math",
                  "amc23": "lighteval_math"},
}
LIGHTEVAL_SUITES["lighteval-0.13"] = {**LIGHTEVAL_SUITES["lighteval"], "math500": "lighteval_math_0.13",
                                      "aime24": "lighteval_aime_0.13"}


def eval_prompt_names() -> list[str]:
    """Every value `eval.prompt` (and a benchmark override) accepts."""
    return sorted(PROMPTS) + sorted(EVAL_TEMPLATES) + sorted(LIGHTEVAL_SUITES)


def benchmark_template(prompt: str, benchmark: str, overrides: dict[str, str] | None = None) -> str:
    """The template that evaluates `benchmark`: its override, else `prompt` (a suite picks per benchmark)."""
    from srlm.errors import UserError

    key = f"eval.benchmark_prompts.{benchmark}" if benchmark in (overrides or {}) else "eval.prompt"
    name = (overrides or {}).get(benchmark, prompt)
    if name in LIGHTEVAL_SUITES:
        suite = LIGHTEVAL_SUITES[name]
        if benchmark not in suite:
            raise UserError(f"{key}: {name!r} has no template for benchmark {benchmark!r} (it covers "
                            f"{', '.join(sorted(suite))}); set eval.benchmark_prompts.{benchmark} to one of "
                            f"{', '.join(sorted(PROMPTS) + sorted(EVAL_TEMPLATES))}")
        return suite[benchmark]
    if name not in PROMPTS and name not in EVAL_TEMPLATES:
        import difflib

        close = difflib.get_close_matches(name, eval_prompt_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; choose one of {', '.join(eval_prompt_names())}"
        raise UserError(f"{key}: unknown prompt template {name!r}{hint}")
    return name


def fewshot_draw(pool_size: int, k: int, seed: int, index: int) -> list[int]:
    """Indices of problem `index`'s few-shot examples: `k` distinct pool rows from a generator seeded by
    (`seed`, `index`), so a problem gets the same examples in any shard, order or resumed run."""
    if k <= 0 or pool_size == 0:
        return []
    digest = hashlib.blake2b(f"fewshot/{seed}/{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big")).sample(range(pool_size), min(k, pool_size))


def render_eval_prompt(tokenizer, template: str, record: dict, fewshot: list[dict] = ()) -> str:
    """The text the model is conditioned on for `record` under `template` (a PROMPTS or EVAL_TEMPLATES name).

    With a chat template: few-shot examples as user/assistant turns, then the query (lighteval with
    `--use-chat-template`, as open-r1 ran it). Without one: lighteval's plain context, each example's query
    and answer, then the query, joined by blank lines."""
    if template in PROMPTS:
        return render_prompt(tokenizer, template, record["question"])
    t = EVAL_TEMPLATES[template]
    shots = [(t.query(ex), t.target(ex)) for ex in fewshot] if t.target else []
    query = t.query(record)
    if getattr(tokenizer, "chat_template", None):
        messages = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        messages.append({"role": "user", "content": query})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join([q + a for q, a in shots] + [query])


def eval_stop_strings(tokenizer, template: str) -> tuple[str, ...]:
    """Stop strings of `template` for this tokenizer. Like lighteval (vLLM and transformers backends, 0.8
    to 0.13: "for chat models, generation stops with EOS token"), a prompt rendered with a chat template
    stops only at the end of the turn; the task's stop strings apply to plain prompts."""
    t = EVAL_TEMPLATES.get(template)
    if t is None or getattr(tokenizer, "chat_template", None):
        return ()
    return t.stop


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first stop string (engines keep the stop string in their text; harnesses do not)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


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
