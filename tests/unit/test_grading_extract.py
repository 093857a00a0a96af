"""Which answer is extracted, and which rule reports it."""

import pytest

from srlm.grading import extract_answer
from srlm.grading.extract import last_boxed, matching_braces, sanitize, strip_think


@pytest.mark.parametrize("response,answer,method", [
    ("<think>x</think><answer>42</answer>", "42", "answer_tag"),
    ("<answer> \\boxed{\\frac{1}{2}} </answer>", "\\frac{1}{2}", "answer_tag"),
    ("<answer>The final answer is $7$.</answer>", "7", "answer_tag"),
    ("<answer>42 apples</answer>", "42 apples", "answer_tag"),
    ("<answer>Janet makes $18 every day.</answer>", "18", "answer_tag"),
    ("<answer>a</answer> more <answer>b</answer>", "b", "answer_tag"),
    ("<answer>   </answer>", None, "answer_tag"),
    ("<answer>5", "5", "answer_tag"),
    ("<answer>#### 1,080</answer>", "1,080", "answer_tag"),
    ("so $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}", "boxed"),
    ("\\boxed{1} then \\boxed{2}", "2", "boxed"),
    ("\\boxed{1} then \\fbox{3}", "3", "boxed"),
    ("\\boxed{1} then truncated \\boxed{2", "1", "boxed"),
    ("answer $\\boxed 9$.", "9", "boxed"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", "boxed"),
    ("The final answer is $4.5 \\times 10^{33}$. I hope it is correct.", "4.5 \\times 10^{33}", "final_answer"),
    ("Final Answer: 12", "12", "final_answer"),
    ("**Answer:** 12", "12", "final_answer"),
    ("The answer is 3.5.", "3.5", "final_answer"),
    ("$\\boxed{12}$. The answer is correct.", "12", "boxed"),
    ("I wrote \\boxed{3} but the final answer is $4$.", "4", "final_answer"),
    ("so 3 + 4 = 7\n#### 7", "7", "gsm8k"),
    ("#### 1,080", "1,080", "gsm8k"),
    ("#### Step 1\nSo we get 5 apples.", "5", "last_number"),
    ("Thus she has 12 apples left.", "12", "last_number"),
    ("so the probability is $\\frac{1}{2}$.", "\\frac{1}{2}", "last_number"),
    ("no digits here", None, "none"),
    ("<think>reasoning \\boxed{5}", None, "unclosed_think"),
    ("<think>a</think> b <think> c", None, "unclosed_think"),
    ("<think>reasoning \\boxed{5}</think> so \\boxed{6}", "6", "boxed"),
    ("<think>reasoning \\boxed{5}</think>", None, "none"),
    ("reasoning</think> so \\boxed{6}", "6", "boxed"),
])
def test_extract_answer(response, answer, method):
    found = extract_answer(response)
    assert (found.answer, found.method) == (answer, method)


def test_boxes_are_never_merged_and_nested_braces_kept():
    assert last_boxed("\\boxed{a{b}c} x \\boxed{\\frac{1}{2}}")[0] == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b}c}")[0] == "a{b}c"
    assert last_boxed("no box") is None


def test_matching_braces_ignores_escaped_braces():
    text = "{a\\{b}"
    assert matching_braces(text) == {0: 5}


def test_strip_think():
    assert strip_think("<think>a</think>b") == "b"
    assert strip_think("<think>a") is None
    assert strip_think("plain") == "plain"


def test_sanitize_replaces_lone_surrogates():
    assert sanitize("a\ud800b") == "a\ufffdb"
    assert sanitize(None) == ""
    assert sanitize(12) == "12"
