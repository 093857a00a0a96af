"""Turn canonical records into training examples. Pure: no I/O, everything comes in as arguments.

- de-duplication by exact and by normalised question text (`dedup`);
- GSM8K calculator notes (`<<48/2=24>>`) removed (`strip_calculator_notes`);
- reference solutions and teacher traces rewritten in the paper's completion format
  `<think>reasoning</think>\\n<answer>final answer</answer>` (`format_cot`, `to_sft_example`);
- the completion a stage trains on (`completion_for`), and a teacher's accepted response in that format
  (`trace_solution`);
- RL examples as question + gold answer (`to_rl_example`);
- `prepare` chaining these with a length filter and a count of what was dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from srlm.data.sources import boxed_gold, gsm8k_final_answer
from srlm.grading.grade import is_tagged
from srlm.errors import UserError

Record = dict[str, Any]

# The instruction that asks a model for the paper's completion format; the prompts module puts it in front
# of the question. Kept next to `format_cot` so the two cannot drift apart.
TAG_INSTRUCTION = (
    "Solve the following math problem. First think through it step by step inside <think> </think> tags, "
    "then write only the final answer inside <answer> </answer> tags, in this format:\n"
    "<think>reasoning</think>\n<answer>final answer</answer>"
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


# --------------------------------------------------------------------------------------------------------
# De-duplication
# --------------------------------------------------------------------------------------------------------


def normalize_question(text: str) -> str:
    """Question text compared for near-duplicates: case-folded, whitespace runs collapsed to one space."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class DedupReport:
    """How many records went in, and how many were dropped as exact or normalised-text duplicates."""

    n_in: int
    n_exact: int
    n_normalized: int

    @property
    def n_duplicates(self) -> int:
        return self.n_exact + self.n_normalized

    @property
    def n_out(self) -> int:
        return self.n_in - self.n_duplicates


def dedup(records: Iterable[Record]) -> tuple[list[Record], DedupReport]:
    """Keep the first record of each question; later ones with the same text (exact) or the same text
    up to case and whitespace (normalised) are dropped and counted separately."""
    kept: list[Record] = []
    exact: set[str] = set()
    normalized: set[str] = set()
    n_in = n_exact = n_normalized = 0
    for record in records:
        n_in += 1
        question = record["question"]
        key = normalize_question(question)
        if question in exact:
            n_exact += 1
        elif key in normalized:
            n_normalized += 1
        else:
            kept.append(record)
        exact.add(question)
        normalized.add(key)
    return kept, DedupReport(n_in, n_exact, n_normalized)


# --------------------------------------------------------------------------------------------------------
# Completion formatting
# --------------------------------------------------------------------------------------------------------

# A note is `<<expression=result>>` on one line; requiring the `=` leaves other uses of `<<`, `>>` alone.
_CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*=[^<>\n]*>>")


def strip_calculator_notes(text: str) -> str:
    """Remove GSM8K calculator annotations: `48/2 = <<48/2=24>>24` -> `48/2 = 24`."""
    return _CALCULATOR_NOTE.sub("", text)


def format_cot(reasoning: str, answer: str) -> str:
    """The paper's completion format: `<think>reasoning</think>\\n<answer>answer</answer>`."""
    return f"{THINK_OPEN}{reasoning.strip()}{THINK_CLOSE}\n{ANSWER_OPEN}{answer.strip()}{ANSWER_CLOSE}"


def split_gsm8k_solution(solution: str) -> tuple[str, str | None]:
    """(reasoning, final answer) of a GSM8K-style solution: the lines before the `####` line with
    calculator notes removed, and the answer after `####` (None if there is no such line)."""
    reasoning: list[str] = []
    for line in solution.splitlines():
        if line.lstrip().startswith("####"):
            break
        reasoning.append(line)
    return strip_calculator_notes("\n".join(reasoning)).strip(), gsm8k_final_answer(solution)


def split_trace(trace: str) -> tuple[str, str | None]:
    """(reasoning, final answer) of a teacher trace in R1 style: `<think>…</think>` then a write-up ending
    in `\\boxed{}`. The reasoning is the thinking followed by the write-up (both are the teacher's
    reasoning; only the answer gets its own tag); the answer is the write-up's last `\\boxed{}`. A trace
    without tags is taken as all reasoning."""
    if THINK_CLOSE in trace:
        thinking, _, write_up = trace.partition(THINK_CLOSE)
        thinking = thinking.replace(THINK_OPEN, "", 1).strip()
        write_up = write_up.strip()
        reasoning = f"{thinking}\n\n{write_up}".strip() if write_up else thinking
        answer = boxed_gold(write_up) or boxed_gold(thinking)
    else:
        reasoning, answer = trace.strip(), boxed_gold(trace)
    return reasoning, answer


def _gsm8k_completion(record: Record) -> str:
    reasoning, _ = split_gsm8k_solution(record["solution"])
    # The gold answer, not the text after ####: it is already normalised (commas removed).
    return format_cot(reasoning, record["answer"])


def _latex_completion(record: Record) -> str:
    return format_cot(record["solution"], record["answer"])


def _trace_completion(record: Record) -> str:
    reasoning, answer = split_trace(record["solution"])
    # The teacher's own final answer is what it reasoned to; fall back to the gold when it boxed nothing.
    return format_cot(reasoning, answer or record["answer"])


# Solution format -> completion builder. `meta["solution_format"]` names it (sources.py sets it for every
# built-in dataset); records without it are recognised by their text (`solution_format`).
COMPLETION_BUILDERS: dict[str, Callable[[Record], str]] = {
    "gsm8k": _gsm8k_completion,
    "latex": _latex_completion,
    "trace": _trace_completion,
}


def solution_format(record: Record) -> str:
    """Which completion builder fits the record's solution: its `meta["solution_format"]`, else guessed:
    a `</think>` means a teacher trace, a `####` line a GSM8K solution, anything else LaTeX prose."""
    declared = (record.get("meta") or {}).get("solution_format")
    if declared:
        if declared not in COMPLETION_BUILDERS:
            raise UserError(f"record {record.get('id')}: unknown solution_format {declared!r}; "
                            f"known: {', '.join(COMPLETION_BUILDERS)}")
        return declared
    solution = record["solution"]
    if THINK_CLOSE in solution:
        return "trace"
    if any(line.lstrip().startswith("####") for line in solution.splitlines()):
        return "gsm8k"
    return "latex"


# --------------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------------


def to_sft_example(record: Record) -> dict[str, str]:
    """`{"id", "prompt": question, "completion": formatted reference solution}` for supervised training."""
    if not record.get("solution"):
        raise UserError(f"record {record.get('id')} has no reference solution, so no SFT completion can be "
                        f"built; use --for rl, or a dataset with solutions")
    completion = COMPLETION_BUILDERS[solution_format(record)](record)
    return {"id": record["id"], "prompt": record["question"], "completion": completion}


def is_paper_completion(text: str) -> bool:
    """`<think>…</think>` then `<answer>…</answer>` and nothing else: already the completion to train on
    (the grader's format check, `grading.grade.is_tagged`, on the text as it is)."""
    return is_tagged(text)


def completion_for(record: Record, completion: str = "tags") -> str:
    """The completion to train on. `tags`: the paper's format: a teacher trace already in it is kept
    verbatim (it is what the grader accepted), anything else goes through `to_sft_example`.
    `solution`: the reference solution as written (e.g. to make a plain chat "instruct" model)."""
    if completion == "solution":
        if not record.get("solution"):
            raise UserError(f"record {record.get('id')} has no solution to train on (completion: solution)")
        return record["solution"].strip()
    if record.get("solution") and is_paper_completion(record["solution"]):
        return record["solution"].strip()
    return to_sft_example(record)["completion"]


def trace_solution(text: str, extracted: str | None) -> tuple[str, bool]:
    """(completion in the paper's format, whether it had to be rewritten) for an accepted teacher response.

    A response already shaped `<think>…</think>\\n<answer>…</answer>` is kept verbatim; any other correct
    one (e.g. a `\\boxed{}` write-up) becomes `<think>response</think>\\n<answer>extracted</answer>`.
    """
    if is_paper_completion(text):
        return text.strip(), False
    body = text
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        body = body.replace(tag, "")
    return format_cot(body, extracted or ""), True


def to_rl_example(record: Record) -> dict[str, str]:
    """`{"id", "prompt": question, "answer": gold}` for reinforcement learning against the gold answer."""
    return {"id": record["id"], "prompt": record["question"], "answer": record["answer"]}


def _sft_length(example: dict[str, str]) -> int:
    return len(example["prompt"]) + len(example["completion"])


def _rl_length(example: dict[str, str]) -> int:
    return len(example["prompt"])


Purpose = Literal["sft", "rl"]

# Purpose -> (example builder, the length `max_chars` limits).
EXAMPLE_BUILDERS: dict[str, tuple[Callable[[Record], dict[str, str]], Callable[[dict[str, str]], int]]] = {
    "sft": (to_sft_example, _sft_length),
    "rl": (to_rl_example, _rl_length),
}


@dataclass(frozen=True)
class PrepareReport:
    """Counts through `prepare`: records in, duplicates dropped, too long dropped, examples out."""

    n_in: int
    n_duplicates: int
    n_too_long: int
    n_out: int


def prepare(records: Iterable[Record], for_: Purpose = "sft",
            max_chars: int | None = None) -> tuple[list[dict[str, str]], PrepareReport]:
    """De-duplicate `records`, build `for_` examples, and drop those longer than `max_chars` characters
    (prompt + completion for SFT, prompt for RL; no limit when None)."""
    if for_ not in EXAMPLE_BUILDERS:
        raise UserError(f"unknown purpose {for_!r}; choose one of {', '.join(EXAMPLE_BUILDERS)}")
    if max_chars is not None and max_chars < 1:
        raise UserError(f"max_chars must be a positive number of characters, got {max_chars}")
    build, length = EXAMPLE_BUILDERS[for_]
    kept, dedup_report = dedup(records)
    examples = [build(record) for record in kept]
    if max_chars is not None:
        fitting = [ex for ex in examples if length(ex) <= max_chars]
    else:
        fitting = examples
    report = PrepareReport(dedup_report.n_in, dedup_report.n_duplicates, len(examples) - len(fitting), len(fitting))
    return fitting, report
