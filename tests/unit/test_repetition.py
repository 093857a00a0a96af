"""The repetition-loop detector: true loops, legitimate repetition (tables, repeated short lines), short
responses, token ids."""

from __future__ import annotations

import pytest

from srlm.repetition import ends_in_loop, tail_loop, tokens_end_in_loop

SOLUTION = ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48 + 24 = 72 clips altogether in April and May.\n"
            "Therefore, the final answer is: $\\boxed{72}$. I hope it is correct")
SENTENCE = "Wait, let me recompute 48 + 24 to be sure. "


def test_a_sentence_repeated_to_the_end_is_a_loop():
    loop = tail_loop("Natalia sold 48/2 = 24 clips in May.\n" + SENTENCE * 30)
    assert loop is not None and loop.period == len(SENTENCE) and loop.span == len(SENTENCE) * 30
    assert loop.repeats == 30


def test_a_loop_cut_mid_unit_by_the_token_limit_is_a_loop():
    text = "Natalia sold 48/2 = 24 clips in May.\n" + SENTENCE * 30 + SENTENCE[:17]
    loop = tail_loop(text)
    assert loop is not None and loop.period == len(SENTENCE) and loop.span == len(SENTENCE) * 30 + 17


def test_a_repeated_paragraph_and_a_repeated_box():
    paragraph = ("Let x be the number of apples. Then 3x + 5 = 20, so 3x = 15 and x = 5.\n"
                 "Let me double check this computation with another approach.\n\n")
    assert tail_loop("Intro.\n" + paragraph * 6).period == len(paragraph)
    assert ends_in_loop("So the answer is " + "\\boxed{5}\n" * 40)
    assert tail_loop("x" + "ab" * 200).period == 2  # the shortest period, not a multiple of it


def test_the_loop_must_reach_the_end():
    assert not ends_in_loop(SENTENCE * 30 + SOLUTION)  # it got out of the loop and answered


@pytest.mark.parametrize("text", [
    "",
    "72",
    "The answer is 72. The answer is 72.",
    "\\boxed{5}\n\\boxed{5}\n\\boxed{5}\n",  # three copies, 30 characters
    SOLUTION,
    "ha " * 40,  # 4 copies or more but only 120 characters: a short response
])
def test_short_or_normal_responses_are_not_loops(text):
    assert not ends_in_loop(text)


def test_a_table_of_values_is_not_a_loop():
    table = "".join(f"| {x} | {x * x} | {2 * x + 1} |\n" for x in range(1, 60))
    assert not ends_in_loop("We tabulate f(x) = x^2:\n| x | x^2 | 2x+1 |\n|---|---|---|\n" + table)
    counting = "".join(f"Step {k}: add 7 to get {7 * k}.\n" for k in range(1, 80))
    assert not ends_in_loop(counting)  # near-repetition is not exact repetition


def test_repeated_lines_followed_by_the_answer_are_not_a_loop():
    lines = "| 0 | 0 | 0 |\n" * 20  # identical table rows, legitimately
    assert not ends_in_loop("The grid is all zeros:\n" + lines + "So the sum is $\\boxed{0}$.")
    assert ends_in_loop("The grid is all zeros:\n" + lines)  # ending in them is, by this definition


def test_thresholds():
    unit = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX"  # 50 distinct characters
    assert tail_loop("z" + unit * 3) is None  # 150 characters, 3 copies
    assert tail_loop("z" + unit * 4).period == 50  # 200 characters, 4 copies
    assert tail_loop("z" + unit * 4, min_repeats=5) is None
    assert tail_loop("z" + unit * 4, min_span=201) is None


def test_token_ids():
    prompt_like = list(range(100, 180))
    assert tokens_end_in_loop(prompt_like + [5, 6, 7, 8, 9, 10, 11, 12] * 8)  # 64 tokens, 8 copies
    assert not tokens_end_in_loop(prompt_like + [5, 6, 7, 8, 9, 10, 11, 12] * 7)  # 56 tokens
    assert not tokens_end_in_loop(list(range(500)))
    assert tail_loop([1, 2] * 100, min_span=10).span == 200


def test_units_longer_than_the_window_share_are_not_seen():
    unit = "".join(chr(0x4E00 + i) for i in range(3000))  # 3,000 distinct characters, repeated 4 times
    assert tail_loop(unit * 4, window=8192) is None  # only 8192 / 4 = 2048-element units fit
    assert tail_loop(unit * 4, window=12000).period == 3000


def test_a_real_models_loop():
    # SmolLM2-135M-Instruct on a MATH-500 problem (lighteval prompt, temperature 0.6): it varied the
    # sentence twice, then repeated it until it emitted EOS. The loop starts at the first exact copy.
    unit = ("\n\nThis is the sum of $n$ terms of the cubic polynomial of degree $n$ that is a cubic polynomial "
            "of degree $n$.")
    varied = ("This is the sum of $n$ terms of the cubic polynomial of degree $n-1$ that is a cubic polynomial of "
              "degree $n-1$ that is a cubic polynomial of degree $n$ that is a cubic polynomial of degree $n$.")
    loop = tail_loop(varied + unit * 5)
    assert loop is not None and loop.period == len(unit) and loop.span >= 5 * len(unit)
    assert tail_loop(varied + unit * 3) is None  # three copies are not yet a loop
