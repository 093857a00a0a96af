"""Grade math answers: extract the final answer of a response and decide if it equals the gold.

Pure functions, no file I/O, no torch. ``grade`` is the entry point used by evaluation and RL; see
``extract.py`` for how answers are found and ``equivalence.py`` for how they are compared.
"""

from srlm.grading.equivalence import Gold, Verdict, compare, is_equivalent, parse_gold
from srlm.grading.extract import Extraction, extract_answer
from srlm.grading.grade import Grade, format_ok, grade
from srlm.grading.rewards import REWARDS, combine_rewards, get_reward

# Bump when a change can flip a verdict, so stored evaluation results say which grader made them.
# 1.0: the first release. 2.0: issue 19's false accepts and false rejects (labelled equations, choice
# letters, short decimal golds, committed last numbers, boxes read together, ...). 2.1: restated
# questions commit to nothing, chained and lettered ("C. x = 42") golds. 2.2: values ruled out ("not 6",
# "6 is wrong") are not answers; at most 16 adjacent boxes are read together. 2.3: "the answer is <value>"
# after a box corrects it (not a question, a check or a hedge). 2.4: the one letter a sentence picks for a
# choice gold; a decimal comma against a decimal gold. 2.5: an exact irrational answer rounds to a rounded
# gold (`\frac{\sqrt3}{2}` for `0.866`). 2.6: a restated task ("we need to simplify $…$") is not an
# answer; a chain with variables counts only as an identity. 2.7: a one-sentence answer in the tags whose
# last number only points back states its first value. 2.8: rates of one-letter units (`m/s`) and `C`
# are units. 2.9: step functions (floor, ceiling, factorial, binomial) are also compared at spread points.
GRADER_VERSION = "2.9"

__all__ = [
    "GRADER_VERSION",
    "Extraction",
    "Gold",
    "Grade",
    "REWARDS",
    "Verdict",
    "combine_rewards",
    "compare",
    "extract_answer",
    "format_ok",
    "get_reward",
    "grade",
    "is_equivalent",
    "parse_gold",
]
