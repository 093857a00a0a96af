"""LightEval's task prompts, rendered for fixed problems and compared with texts written out by hand from
lighteval's source (tags v0.8.0, v0.12.2, v0.13.0 and open-r1's pinned commit d3da6b9b)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srlm.config import EvalConfig
from srlm.data.prompts import (EVAL_TEMPLATES, LIGHTEVAL_SUITES, benchmark_template, cut_at_stop, eval_stop_strings,
                               fewshot_draw, render_eval_prompt)
from srlm.errors import UserError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class Plain:
    """A tokenizer without a chat template (a base model's, for lighteval without --use-chat-template)."""

    chat_template = None


class Chat:
    """A tokenizer with a chat template; renders ChatML so the tests see every turn."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def record(question, **meta):
    return {"id": "x", "question": question, "answer": "1", "solution": None, "meta": meta}


MATH_PROBLEM = "What is $\\frac{1}{2} + \\frac{1}{3}$? Write {it} as a fraction."

# lighteval 0.8.0-0.12.2 default_prompts.math_500 (and aime_prompt_fn): the template string, `{{ANSWER}}`
# and `\\boxed` as Python renders them, two spaces after "clearly.", blank line, the problem; `.strip()`.
MATH_PAPER_PERIOD = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of "
    "the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' (without "
    "quotes) where ANSWER is just the final number or expression that solves the problem. Think step by step "
    "before answering.\n"
    "\n"
    "What is $\\frac{1}{2} + \\frac{1}{3}$? Write {it} as a fraction."
)

# lighteval 0.13.0 tasks/tasks/math_500.py MATH_QUERY_TEMPLATE, `.strip()`ped, `{prompt}` filled.
MATH_013 = (
    "Solve the following problem. The final line of your response MUST be of the following format:\n"
    '"ANSWER: $ANSWER" (without quotes) where $ANSWER is the final answer. Think step by step before answering.\n'
    "\n"
    "What is $\\frac{1}{2} + \\frac{1}{3}$? Write {it} as a fraction."
)


def test_math500_paper_period_prompt():
    assert render_eval_prompt(Plain(), "lighteval_math", record(MATH_PROBLEM)) == MATH_PAPER_PERIOD


def test_math500_lighteval_013_prompt_asks_for_an_answer_line():
    assert render_eval_prompt(Plain(), "lighteval_math_0.13", record(MATH_PROBLEM)) == MATH_013


def test_aime_013_keeps_dedents_newlines():
    # 0.13.0 tasks/tasks/aime.py: dedent("""\n<0.12 text>\n\n{prompt}\n"""), never stripped.
    assert render_eval_prompt(Plain(), "lighteval_aime_0.13", record(MATH_PROBLEM)) == \
        "\n" + MATH_PAPER_PERIOD + "\n"


def test_chat_template_wraps_the_query_as_one_user_turn():
    # lighteval --use-chat-template (open-r1's commands): [{"role": "user", "content": query}], generation prompt.
    assert render_eval_prompt(Chat(), "lighteval_math", record(MATH_PROBLEM)) == \
        "<|im_start|>user\n" + MATH_PAPER_PERIOD + "<|im_end|>\n<|im_start|>assistant\n"


GSM_Q = "Janet has 3 apples and buys 2 more. How many apples does she have?"
SHOTS = [
    {"id": "gsm8k-train-0", "question": "Tom has 2 pens. He buys 3. How many?",
     "solution": "Tom has 2+3=<<2+3=5>>5 pens.\n#### 5", "answer": "5", "meta": {}},
    {"id": "gsm8k-train-1", "question": "A box holds 4 eggs. How many in 2 boxes?",
     "solution": "2*4=<<2*4=8>>8\n#### 8", "answer": "8", "meta": {}},
]


def test_gsm8k_zero_shot():
    # default_prompts.gsm8k: f"Question: {line['question']}\nAnswer:"
    assert render_eval_prompt(Plain(), "lighteval_gsm8k", record(GSM_Q)) == f"Question: {GSM_Q}\nAnswer:"


def test_gsm8k_few_shot_plain_context():
    # PromptManager.get_examples without chat template: doc_to_text + doc_to_target (" " + answer) per
    # example, then the query, joined by blank lines.
    expected = ("Question: Tom has 2 pens. He buys 3. How many?\nAnswer: Tom has 2+3=<<2+3=5>>5 pens.\n#### 5"
                "\n\n"
                "Question: A box holds 4 eggs. How many in 2 boxes?\nAnswer: 2*4=<<2*4=8>>8\n#### 8"
                "\n\n"
                f"Question: {GSM_Q}\nAnswer:")
    assert render_eval_prompt(Plain(), "lighteval_gsm8k", record(GSM_Q), SHOTS) == expected


def test_gsm8k_few_shot_chat_turns():
    # With the chat template each example is a user turn (its query) and an assistant turn (" " + answer).
    expected = ("<|im_start|>user\nQuestion: Tom has 2 pens. He buys 3. How many?\nAnswer:<|im_end|>\n"
                "<|im_start|>assistant\n Tom has 2+3=<<2+3=5>>5 pens.\n#### 5<|im_end|>\n"
                "<|im_start|>user\nQuestion: A box holds 4 eggs. How many in 2 boxes?\nAnswer:<|im_end|>\n"
                "<|im_start|>assistant\n 2*4=<<2*4=8>>8\n#### 8<|im_end|>\n"
                f"<|im_start|>user\nQuestion: {GSM_Q}\nAnswer:<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert render_eval_prompt(Chat(), "lighteval_gsm8k", record(GSM_Q), SHOTS) == expected


def test_gsm8k_stops_at_the_next_question():
    assert EVAL_TEMPLATES["lighteval_gsm8k"].stop == ("Question:",)  # v0.9.0 onwards (v0.8.0: "Question=")
    assert all(not EVAL_TEMPLATES[n].stop for n in EVAL_TEMPLATES if n != "lighteval_gsm8k")
    # lighteval: "for chat models, generation stops with EOS token": no stop strings with a chat template
    assert eval_stop_strings(Plain(), "lighteval_gsm8k") == ("Question:",)
    assert eval_stop_strings(Chat(), "lighteval_gsm8k") == ()
    assert eval_stop_strings(Plain(), "lighteval_math") == eval_stop_strings(Plain(), "tags") == ()
    assert cut_at_stop("So 5 apples.\n#### 5\n\nQuestion: Bob", ("Question:",)) == "So 5 apples.\n#### 5\n\n"
    assert cut_at_stop("no stop here", ("Question:",)) == "no stop here"
    assert cut_at_stop("a Question: b Question:", ("Question:",)) == "a "


OLY_Q = "Find all $n$ such that $n^2 = 4$."
OLY_START = "The following is an open-ended problem from an International Math competition. "
OLY_MIDDLE = ("Please calculate the answer according to the given requirements and the information provided. "
              "Please use LaTeX format to represent the variables and formulas used in the solution process and "
              "results. Please end your solution with ")


@pytest.mark.parametrize("meta, expected", [
    # extended/olympiade_bench: answer type text, box text, unit text, then "\n" + question.
    ({"answer_type": "Numerical", "is_multiple_answer": False, "unit": None},
     OLY_START + "The answer of The problem should be a numerical value. " + OLY_MIDDLE
     + '"So the final answer is \\boxed{answer}." and give the result explicitly.\n' + OLY_Q),
    ({"answer_type": "Expression", "is_multiple_answer": False, "unit": None},
     OLY_START + "The answer of The problem should be an expression. " + OLY_MIDDLE
     + '"So the final answer is \\boxed{answer}." and give the result explicitly.\n' + OLY_Q),
    ({"answer_type": "Interval", "is_multiple_answer": False, "unit": None},
     OLY_START + "The answer of The problem should be an interval. " + OLY_MIDDLE
     + '"So the final answer is \\boxed{answer}." and give the result explicitly.\n' + OLY_Q),
    ({"answer_type": "Numerical", "is_multiple_answer": True, "unit": None},
     OLY_START + "The problem has multiple answers, each of them should be a numerical value. " + OLY_MIDDLE
     + '"So the final answer is \\boxed{multiple answers connected with commas}." and give the result '
       "explicitly.\n" + OLY_Q),
    ({"answer_type": "Numerical,Expression", "is_multiple_answer": True, "unit": None},
     OLY_START + "The problem has multiple answers, with the answers in order being a numerical value, an "
                 "expression. " + OLY_MIDDLE
     + '"So the final answer is \\boxed{multiple answers connected with commas}." and give the result '
       "explicitly.\n" + OLY_Q),
    # Tuple: no answer type sentence at all
    ({"answer_type": "Tuple", "is_multiple_answer": True, "unit": None},
     OLY_START + OLY_MIDDLE
     + '"So the final answer is \\boxed{multiple answers connected with commas}." and give the result '
       "explicitly.\n" + OLY_Q),
    ({"answer_type": "Numerical", "is_multiple_answer": False, "unit": "km/h"},
     OLY_START + "The answer of The problem should be a numerical value. " + OLY_MIDDLE
     + '"So the final answer is \\boxed{answer}(unit)." and give the result explicitly, note that the unit '
       "of the answer should not be included in \\boxed{}.\n" + OLY_Q),
])
def test_olympiadbench_official_instruction(meta, expected):
    assert render_eval_prompt(Plain(), "lighteval_olympiadbench", record(OLY_Q, **meta)) == expected


def test_olympiadbench_unknown_answer_type_is_a_user_error():
    with pytest.raises(UserError, match="answer type 'Proof'"):
        render_eval_prompt(Plain(), "lighteval_olympiadbench", record(OLY_Q, answer_type="Proof"))


@pytest.mark.skipif(not (DATA / "olympiadbench" / "test.jsonl").exists(), reason=f"no OlympiadBench at {DATA}")
def test_olympiadbench_fields_of_the_real_file_reach_the_prompt():
    from srlm.data.sources import load_records

    records = load_records("olympiadbench", path=DATA)
    prompts = {r["id"]: render_eval_prompt(Plain(), "lighteval_olympiadbench", r) for r in records}
    with_unit = [r for r in records if r["meta"]["unit"]]
    multiple = [r for r in records if r["meta"]["is_multiple_answer"]]
    assert len(with_unit) == 8 and len(multiple) == 94
    assert all("(unit)." in prompts[r["id"]] for r in with_unit)
    assert all("multiple answers connected with commas" in prompts[r["id"]] for r in multiple)
    assert sum("The answer of The problem should be" in p for p in prompts.values()) == \
        sum(1 for r in records if not r["meta"]["is_multiple_answer"] and r["meta"]["answer_type"] != "Tuple")
    first = json.loads((DATA / "olympiadbench" / "test.jsonl").read_text().splitlines()[0])
    assert prompts["olympiadbench-test-1606"].endswith("\n" + first["question"])


def test_lighteval_suite_picks_each_benchmarks_template():
    paper = {b: benchmark_template("lighteval", b) for b in LIGHTEVAL_SUITES["lighteval"]}
    assert paper == {"gsm8k": "lighteval_gsm8k", "math500": "lighteval_math", "aime24": "lighteval_math",
                     "olympiadbench": "lighteval_olympiadbench",
                     "minerva_math": "lighteval_math", "amc23": "lighteval_math"}  # no lighteval task: MATH's
    assert benchmark_template("lighteval-0.13", "math500") == "lighteval_math_0.13"
    assert benchmark_template("lighteval-0.13", "gsm8k") == "lighteval_gsm8k"
    # a benchmark's own template wins over the suite; plain templates apply to every benchmark
    assert benchmark_template("lighteval", "math500", {"math500": "lighteval_math_0.13"}) == "lighteval_math_0.13"
    assert benchmark_template("lighteval", "math500", {"gsm8k": "boxed"}) == "lighteval_math"
    assert benchmark_template("boxed", "synthetic") == "boxed"
    for name in {t for suite in LIGHTEVAL_SUITES.values() for t in suite.values()}:
        assert EVAL_TEMPLATES[name].reproduces.startswith("lighteval 0.")  # names the version reproduced


def test_eval_config_rejects_prompts_at_load_time():
    EvalConfig(prompt="lighteval", benchmark_prompts={"math500": "lighteval-0.13"})
    with pytest.raises(UserError, match="eval.prompt: unknown prompt template 'lightevel'; did you mean 'lighteval'"):
        EvalConfig(prompt="lightevel")
    with pytest.raises(UserError, match="eval.prompt: 'lighteval' has no template for benchmark 'synthetic'"):
        EvalConfig(prompt="lighteval", benchmarks=[{"name": "synthetic"}])
    with pytest.raises(UserError, match="eval.benchmark_prompts.math500: unknown prompt template"):
        EvalConfig(prompt="lighteval", benchmark_prompts={"math500": "nope"})


def test_fewshot_draw_is_seeded_per_problem():
    a = [fewshot_draw(7473, 5, 0, i) for i in range(50)]
    assert a == [fewshot_draw(7473, 5, 0, i) for i in range(50)]  # same in any run, shard or order
    assert all(len(set(x)) == 5 and all(0 <= k < 7473 for k in x) for x in a)
    assert len({tuple(x) for x in a}) == 50  # each problem its own draw
    assert a != [fewshot_draw(7473, 5, 1, i) for i in range(50)]  # the seed changes it
    assert fewshot_draw(3, 5, 0, 0) and sorted(fewshot_draw(3, 5, 0, 0)) == [0, 1, 2]
    assert fewshot_draw(100, 0, 0, 0) == []
