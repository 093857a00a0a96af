"""One table per error class the grader was once seen to make (issue 19), each in both directions:
the right answer in a real model output format is accepted, the near miss is rejected.

Rows are (response, gold, expected). Responses are written the way small instruct and R1-style
models write them: ``\\boxed{}`` inside ``$…$``, "Final Answer: The final answer is …", ``<answer>``
tags, GSM8K ``####`` lines, bare prose.
"""

import pytest

from srlm.grading import extract_answer, grade

CLASSES: dict[str, list[tuple[str, str, bool]]] = {
    # --- false accepts -------------------------------------------------------------------------------
    "equation_compared_by_rhs_only": [
        ("Hence $\\boxed{\\cos x = \\frac{42}{59}}$.", "\\sin x = \\frac{42}{59}", False),
        ("Hence $\\boxed{\\cos(x) = 42/59}$.", "\\sin(x) = \\frac{42}{59}", False),
        ("Hence $\\boxed{\\sin x = \\frac{42}{59}}$.", "\\sin x = \\frac{42}{59}", True),
        ("So $\\sin x = \\boxed{\\frac{42}{59}}$.", "\\sin x = \\frac{42}{59}", True),
        ("The line is $\\boxed{x=2x+1}$.", "y=2x+1", False),
        ("The line is $\\boxed{y=2x+1}$.", "y=2x+1", True),
        ("The line is $\\boxed{y = 1 + 2x}$.", "y=2x+1", True),
        ("<answer>x = 2x + 1</answer>", "2x+1", False),
        ("So $\\boxed{\\frac{x^2-1}{x-1} = x+1}$.", "x+1", True),  # a chain that is an identity
        ("<answer>y = 2x + 1</answer>", "2x+1", True),
        ("The inverse is $\\boxed{y = \\frac{x-1}{2}}$.", "f^{-1}(x) = \\frac{x-1}{2}", True),
        ("$\\boxed{y = 5}$", "x = 5", False),
        ("$\\boxed{x = 5}$", "x = 5", True),
    ],
    "named_values_out_of_order": [
        ("Therefore $\\boxed{a=2, b=1}$.", "a=1, b=2", False),
        ("Therefore $\\boxed{a=1, b=2}$.", "a=1, b=2", True),
        ("Therefore $\\boxed{b=2, a=1}$.", "a=1, b=2", True),
        ("Therefore $a = \\boxed{1}$ and $b = \\boxed{2}$.", "a=1, b=2", True),
        ("Therefore $\\boxed{1, 2}$.", "a=1, b=2", True),
        ("Therefore $\\boxed{2, 1}$.", "a=1, b=2", False),
        ("<answer>x = 3, x = 2</answer>", "x=2, x=3", True),
        ("<answer>x = 3, y = 2</answer>", "x=2, y=3", False),
    ],
    "choice_letter_on_non_choices": [
        ("The answer is $\\boxed{A+B}$.", "A", False),
        ("The answer is $\\boxed{E'}$.", "E", False),
        ("The answer is $\\boxed{AB}$.", "A", False),
        ("The answer is $\\boxed{A}$.", "A", True),
        ("The answer is $\\boxed{\\text{(A)}}$.", "A", True),
        ("The correct answer is (E).", "E", True),
        ("The answer is $\\boxed{B) 12}$.", "B", True),
        ("The answer is $\\boxed{\\textbf{(E)}\\ 25}$.", "E", True),
        ("The answer is $\\boxed{B \\text{ and } C}$.", "B", False),
        ("The answer is (B) or (C).", "B", False),
        ("The answer is $\\boxed{B}$.", "C", False),
        # A letter picked in a sentence; letters ruled out or hedged do not count.
        ("I think the correct answer is C", "C", True),
        ("The answer is for sure D, it can't be A or B", "D", True),
        ("The answer is for sure D, it can't be A or B", "A", False),
        ("The answer: D, it does not make sense for it to be A", "D", True),
        ("The answer is either B or C, I think", "B", False),
        ("The answer is A good guess would be C", "A", False),
    ],
    "digit_inside_junk_word": [
        ("The answer is AZYUK2A.", "2", False),
        ("$\\boxed{AZYUK2A}$", "2", False),
        ("<answer>H2O</answer>", "2", False),
        ("The answer is 2.", "2", True),
        ("<answer>2 apples</answer>", "2", True),
    ],
    "decimal_tolerance_for_short_golds": [
        ("$\\boxed{0.10001}$", "0.1", False),
        ("$\\boxed{7.21}$", "7.2", False),
        ("Final Answer: The final answer is 7.25. I hope it is correct.", "7.2", False),
        ("$\\boxed{7.2}$", "7.2", True),
        ("$\\boxed{7.20}$", "7.2", True),
        ("$\\boxed{0.1}$", "0.1", True),
        ("$\\boxed{\\frac{1}{10}}$", "0.1", True),
        # A gold of three or more significant digits, or in scientific notation, is a rounded value.
        ("$\\boxed{20.386}$", "20.39", True),
        ("$\\boxed{20.38}$", "20.39", False),
        ("$\\boxed{4.46 \\times 10^{33}}$", "4.5e33", True),
        ("$\\boxed{4.44 \\times 10^{33}}$", "4.5e33", False),
        # An exact irrational answer rounds to a rounded gold; a short decimal never stands for one.
        ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "0.866", True),
        ("$\\boxed{2\\pi}$", "6.28", True),
        ("$\\boxed{\\frac{\\sqrt{2}}{2}}$", "0.866", False),
        ("$\\boxed{6.28}$", "2\\pi", False),
        ("$\\boxed{2\\sqrt{5}}$", "4.5", False),
    ],
    "fallback_restates_the_question": [
        ("So he needs 4 books to remove the 15 books.", "15", False),
        ("He removes 4 books from the shelf, which holds the 15 books.", "15", False),
        ("So he needs to remove 4 books.", "4", True),
        ("So he needs 4 books to remove the 15 books.", "4", False),
        ("Thus the total is 11.", "11", True),
        ("Adding them gives 5 + 6 = 11", "11", True),
        # A restated question commits to nothing.
        ("How many books does he need to remove from the 15 books?", "15", False),
        ("Find $x+y$ given $xy = 15$.", "15", False),
        ("So the total is 15. Hmm, what about 16?", "16", False),
        ("If we add them, we get 15.", "15", True),
        ("We need to simplify $\\frac{x^2-1}{x-1}$.", "x+1", False),
        ("We need to simplify it: $\\frac{x^2-1}{x-1} = x+1$.", "x+1", True),
        ("We need to compute 3 + 4 = 7", "7", True),
        # A value named only to be ruled out is not the answer.
        ("The final answer is not 6, it is 7.", "6", False),
        ("The final answer is not 6, it is 7.", "7", True),
        ("So the count is 5, not 6", "6", False),
        ("So the count is 5 and 6 is wrong", "6", False),
        ("$\\boxed{\\text{5 ways, not 6}}$", "6", False),
        ("I'm not sure about step 2 at first.\nAfter checking, the total is 15.", "15", True),
    ],
    "number_in_prose_inside_answer_tags": [
        ("<think>hmm</think><answer>I have no idea, page 2 of my notes</answer>", "2", False),
        ("<think>hmm</think><answer>I am not sure, maybe 2</answer>", "2", False),
        ("<think>hmm</think><answer>See step 2 of the solution</answer>", "2", False),
        ("<think>1+1</think><answer>The result is 2</answer>", "2", True),
        ("<think>1+1</think><answer>There are 2 apples left.</answer>", "2", True),
        # In the tags, a sentence whose last number only points back states its first value.
        ("<think>x</think><answer>She needs 4 more books to reach the 15 books.</answer>", "4", True),
        ("<think>x</think><answer>She needs 4 more books to reach the 15 books.</answer>", "15", False),
        ("<think>x</think><answer>Not 4, it is the 15 books</answer>", "4", False),
    ],
    "empty_box_echoed_from_the_instruction": [
        ("Please put the final answer in \\boxed{}.", "", False),
        ("Put your final answer within \\boxed{}.\n\nThe total is 12.", "12", True),
        ("I got $\\boxed{12}$. (Answer format: \\boxed{}.)", "12", True),
        ("I will write the answer as \\boxed{}.", "0", False),
    ],
    # --- false rejects -------------------------------------------------------------------------------
    "answer_spread_over_boxes": [
        ("The roots are $\\boxed{3}$ and $\\boxed{5}$.", "3, 5", True),
        ("The roots are $x=\\boxed{3}$, $x=\\boxed{5}$.", "3, 5", True),
        ("**Final answer:** \\boxed{3}, \\boxed{5}", "3, 5", True),
        ("The roots are $\\boxed{3}$ and $\\boxed{5}$.", "3", False),
        ("The roots are $\\boxed{3}$ and $\\boxed{6}$.", "3, 5", False),
        # A later single box after prose is a self-correction, and wins alone.
        ("I first got $\\boxed{3}$, but checking again the answer is $\\boxed{5}$.", "5", True),
        ("I first got $\\boxed{3}$, but checking again the answer is $\\boxed{5}$.", "3, 5", False),
    ],
    "answer_phrase_after_a_box": [
        # A later "the answer is <value>" corrects the box; commentary, questions and checks do not.
        ("The answer is \\boxed{450}. Wait, 9*60 = 540, so the answer is 540.", "540", True),
        ("The answer is \\boxed{450}. Wait, 9*60 = 540, so the answer is 540.", "450", False),
        ("So the sum is $\\boxed{24}$.\n\nChallenge: Is it a coincidence that the answer is 24?", "24", True),
        ("So $x = \\boxed{901}$. We can check our answer: $10 \\cdot 901 = 9010 \\equiv 1$.", "901", True),
        ("$\\boxed{12}$. The answer is correct.", "12", True),
        ("$\\boxed{450}$. I think the answer is 540 but I am not sure.", "540", False),
    ],
    "final_answer_sentence_names_a_variable": [
        ("Final Answer: The largest $n$ is 34.", "34", True),
        ("Final Answer: The largest $n$ is $34$.", "34", True),
        ("Final Answer: The largest $n$ is 43.", "34", False),
        ("Final Answer: The value of $x$ is $\\frac{1}{2}$.", "\\frac{1}{2}", True),
    ],
    "prose_after_the_box_mentions_boxed": [
        ("Thus $\\boxed{34}$. I used \\boxed to mark the answer.", "34", True),
        ("Thus $\\boxed{34}$. I used \\boxed to mark the answer.", "43", False),
        ("Thus $\\boxed{34}$, as the instructions ask for \\boxed{}.", "34", True),
    ],
    "last_number_inside_latex": [
        ("so the ratio is \\frac{10}{9}", "\\frac{10}{9}", True),
        ("so the ratio is \\frac{10}{9}.", "9", False),
        ("the ratio simplifies to \\(\\frac{10}{9}\\)", "\\frac{10}{9}", True),
        ("the ratio simplifies to \\(\\frac{9}{10}\\)", "\\frac{10}{9}", False),
        ("which gives \\( (9+1) \\)", "10", True),
        ("which gives \\( (9+1) \\)", "1", False),
    ],
    "step_functions": [
        # Floors are constant over small ranges, so different ones must be told apart at spread points.
        ("$\\boxed{\\lfloor\\sqrt{n-1}\\rfloor}$", "\\lfloor\\frac{2 n-1}{5}\\rfloor", False),
        ("$\\boxed{\\lfloor\\frac{2n-1}{5}\\rfloor}$", "\\lfloor\\frac{2 n-1}{5}\\rfloor", True),
        ("$\\boxed{\\lceil \\frac{n}{2} \\rceil}$", "\\lfloor \\frac{n}{2} \\rfloor", False),
        ("$\\boxed{\\lfloor \\frac{n}{2} \\rfloor + 1}$", "\\lfloor \\frac{n+2}{2} \\rfloor", True),
    ],
    "units_of_one_letter": [
        ("Final Answer: The final answer is 27^\\circ C. I hope it is correct.", "27", True),
        ("Final Answer: The final answer is 1.2e8 m/s. I hope it is correct.", "1.2e5 \\mathrm{~km/s}", True),
        ("Final Answer: The final answer is 1.2e8 m/s. I hope it is correct.", "1.2e5", False),
        ("Final Answer: The final answer is 9.8 m/s^2. I hope it is correct.", "9.8", True),
        ("Final Answer: The final answer is 9.8 m/s^2. I hope it is correct.", "9.9", False),
    ],
    "sets_and_ratios": [
        ("$\\boxed{\\{1,2\\}\\cup\\{3\\}}$", "\\{1,2,3\\}", True),
        ("$\\boxed{\\{1,2\\}\\cup\\{4\\}}$", "\\{1,2,3\\}", False),
        ("The ratio is $\\boxed{1:2}$.", "\\frac{1}{2}", True),
        ("The ratio is $\\boxed{2:1}$.", "\\frac{1}{2}", False),
    ],
    "labelled_golds": [
        ("$\\boxed{(3,2,7)}$", "(p,q,r)=(3,2,7)", True),
        ("$\\boxed{3, 2, 7}$", "(p,q,r)=(3,2,7)", True),
        ("$\\boxed{(p,q,r)=(3,2,7)}$", "(p,q,r)=(3,2,7)", True),
        ("$\\boxed{(2,3,7)}$", "(p,q,r)=(3,2,7)", False),
        ("So $|AB| = \\boxed{1}$.", "|AB|=1", True),
        ("So $|AB| = \\boxed{2}$.", "|AB|=1", False),
        ("The ratio is $\\boxed{1}$.", "A:B=1", True),
        ("The ratio is $\\boxed{2}$.", "A:B=1", False),
        ("$\\boxed{AB=4, CD=5}$", "AB=4, CD=5", True),
        ("$\\boxed{4, 5}$", "AB=4, CD=5", True),
        ("$\\boxed{5, 4}$", "AB=4, CD=5", False),
        ("$\\boxed{AB=5, CD=4}$", "AB=4, CD=5", False),
        # A sum or a power is not a label: `x^2+y^2=1` is a circle, not the value 1.
        ("$\\boxed{1}$", "x^2+y^2=1", False),
        ("$\\boxed{y^2 + x^2 = 1}$", "x^2+y^2=1", True),
        # AMC golds hold the letter and the value: either one is the answer, a wrong letter is not.
        ("The answer is $\\boxed{\\textbf{(B)}}$.", "\\textbf{(B) }7", True),
        ("The answer is $\\boxed{7}$.", "\\textbf{(B) }7", True),
        ("The answer is $\\boxed{\\textbf{(B) }7}$.", "\\textbf{(B) }7", True),
        ("The answer is $\\boxed{\\textbf{(C)}}$.", "\\textbf{(B) }7", False),
        ("The answer is $\\boxed{8}$.", "\\textbf{(B) }7", False),
        ("The answer is $\\boxed{C}$.", "C. x = 42", True),
        ("The answer is $\\boxed{B}$.", "C. x = 42", False),
        # A gold that is a chain of equal values is its first member.
        ("$\\boxed{\\frac{\\sqrt{3}}{3}}$", "\\frac{\\sqrt{3}}{3} \\approx 0.577", True),
        ("$\\boxed{\\frac{\\sqrt{2}}{3}}$", "\\frac{\\sqrt{3}}{3} \\approx 0.577", False),
    ],
    "thousands_separators": [
        ("$\\boxed{1,\\! 000}$", "1000", True),
        ("$\\boxed{12,\\!345}$", "12345", True),
        ("$\\boxed{1 {,} 000}$", "1000", True),
        ("$\\boxed{1{,}000{,}000}$", "1000000", True),
        ("$\\boxed{10,00,000}$", "1000000", True),
        ("$\\boxed{10,00,000}$", "100000", False),
        ("$\\boxed{1,\\! 000}$", "100", False),
        ("$\\boxed{1, 2}$", "12", False),
        # A decimal comma against a decimal gold.
        ("The answer is 1,22", "1.22", True),
        ("The answer is 0,111", "0.111", True),
        ("The answer is 1,23", "1.22", False),
        ("Final Answer: The final answer is $14 {, }916$. I hope it is correct.", "14916", True),
        ("So there were 1 000 people at the fair.", "1000", True),
        ("So there were 1 000 people at the fair.", "1", False),
    ],
    "mixed_numbers": [
        ("He ate $\\boxed{1 1/2}$ pizzas.", "\\frac32", True),
        ("He ate 2 3/4 pizzas.\n#### 2 3/4", "\\frac{11}{4}", True),
        ("He ate $\\boxed{1 1/2}$ pizzas.", "\\frac12", False),
        ("$\\boxed{3\\frac{1}{2}}$", "3.5", True),
    ],
    "not_equal_spellings": [
        ("$\\boxed{x != 2}$", "x \\neq 2", True),
        ("$\\boxed{x \\ne 2}$", "x \\neq 2", True),
        ("$\\boxed{x != 3}$", "x \\neq 2", False),
        ("$\\boxed{5!=120}$", "120", True),
    ],
    "number_words": [
        ("The answer is eight.", "8", True),
        ("$\\boxed{\\text{eight}}$", "8", True),
        ("<answer>Twenty-one</answer>", "21", True),
        ("The answer is eight.", "9", False),
        ("<answer>Twenty-one</answer>", "20", False),
        ("$\\boxed{\\text{Monday}}$", "1", False),
    ],
    "inequalities": [
        ("$\\boxed{-x > -1}$", "x < 1", True),
        ("$\\boxed{-x < -1}$", "x < 1", False),
        ("$\\boxed{2x + 1 \\le 5}$", "x \\le 2", True),
        ("$\\boxed{2x + 1 < 5}$", "x \\le 2", False),
        ("$\\boxed{-2 \\le x \\le 7}$", "[-2, 7]", True),
        ("$\\boxed{[-2, 7]}$", "-2 \\le x \\le 7", True),
        ("$\\boxed{-2 < x \\le 7}$", "[-2, 7]", False),
    ],
    "matrices": [
        ("$\\boxed{\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]}$",
         "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        ("$\\boxed{\\left[\\begin{array}{cc}1&2\\\\4&3\\end{array}\\right]}$",
         "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
        ("$\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}+\\begin{pmatrix}3\\\\4\\end{pmatrix}}$",
         "\\begin{pmatrix}4\\\\6\\end{pmatrix}", True),
        ("$\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}+2\\begin{pmatrix}3\\\\4\\end{pmatrix}}$",
         "\\begin{pmatrix}7\\\\10\\end{pmatrix}", True),
        ("$\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}-\\begin{pmatrix}3\\\\4\\end{pmatrix}}$",
         "\\begin{pmatrix}4\\\\6\\end{pmatrix}", False),
    ],
    "tuples_with_semicolons": [
        ("$\\boxed{(1; 2)}$", "(1,2)", True),
        ("$\\boxed{(2; 1)}$", "(1,2)", False),
        ("$\\boxed{(1;\\ -3;\\ 4)}$", "(1,-3,4)", True),
    ],
    "times_with_seconds": [
        ("$\\boxed{20:34}$", "20:34:00", True),
        ("$\\boxed{20:34:00}$", "20:34", True),
        ("$\\boxed{20:35}$", "20:34:00", False),
        ("$\\boxed{20:34:05}$", "20:34", False),
    ],
    "long_decimals_for_exact_golds": [
        ("$\\boxed{0.0833333333}$", "\\frac{1}{12}", True),
        ("$\\boxed{0.0833333}$", "\\frac{1}{12}", True),
        ("$\\boxed{0.8660254}$", "\\frac{\\sqrt3}{2}", True),
        ("$\\boxed{0.866025}$", "\\frac{\\sqrt3}{2}", True),
        ("$\\boxed{0.6666666}$", "\\frac{2}{3}", True),
        ("$\\boxed{0.083}$", "\\frac{1}{12}", False),
        ("$\\boxed{0.866}$", "\\frac{\\sqrt3}{2}", False),
        ("$\\boxed{0.0834333}$", "\\frac{1}{12}", False),
        ("$\\boxed{0.8661254}$", "\\frac{\\sqrt3}{2}", False),
        ("$\\boxed{2.9999999}$", "3", False),
    ],
}

ROWS = [(name, *row) for name, rows in CLASSES.items() for row in rows]


@pytest.mark.parametrize("name,response,gold,expected", ROWS)
def test_error_class(name, response, gold, expected):
    result = grade(response, gold)
    assert result.correct is expected, (name, result)


def test_every_class_has_both_directions():
    for name, rows in CLASSES.items():
        assert {expected for _, _, expected in rows} == {True, False}, name


@pytest.mark.parametrize("response,answer,method", [
    ("Please put the final answer in \\boxed{}.", None, "none"),
    ("The roots are $\\boxed{3}$ and $\\boxed{5}$.", "3, 5", "boxed"),
    ("Final Answer: The largest $n$ is 34.", "34", "final_answer"),
    ("Thus $\\boxed{34}$. I used \\boxed to mark it.", "34", "boxed"),
    ("so the ratio is \\frac{10}{9}.", "\\frac{10}{9}", "last_number"),
    ("So he needs 4 books to remove the 15 books.", None, "none"),
    ("<answer>I have no idea, page 2 of my notes</answer>", "I have no idea, page 2 of my notes", "answer_tag"),
])
def test_extraction_of_the_classes(response, answer, method):
    found = extract_answer(response)
    assert (found.answer, found.method) == (answer, method)
