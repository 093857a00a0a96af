"""Rewrite an answer's LaTeX into one canonical spelling, before it is parsed.

Only presentation is removed here (math delimiters, ``\\left``/``\\right``, spacing commands,
``\\dfrac``→``\\frac``, thousands separators, Unicode minus, trailing periods). Marks that change how
a value may be read (``%``, degrees, currency) are removed but reported as flags, so the comparison
can decide what they mean. Every rule is a plain substitution or a bounded regex: linear time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from srlm.grading.extract import MAX_ANSWER_CHARS, sanitize


@dataclass(frozen=True)
class Normalized:
    """Canonical LaTeX of one answer plus the marks stripped from it."""

    text: str
    percent: bool = False
    degrees: bool = False
    currency: bool = False


_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash, used as minus by some tokenizers
    "\u2014": "-",
    "\u00d7": "\\times ",
    "\u22c5": "\\cdot ",
    "\u00b7": "\\cdot ",
    "\u00f7": "/",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u221a": "\\sqrt",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u222a": "\\cup ",
    "\u2229": "\\cap ",
    "\u00b1": "\\pm ",
    "\u2032": "'",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\ufffd": "",
    "\u00bd": "(1/2)",
    "\u00bc": "(1/4)",
    "\u00be": "(3/4)",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

# Commands whose only job is typography; removed with the delimiter that follows `\left`/`\right`
# when that delimiter is the invisible ".".
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?")
_SPACING_EMPTY = re.compile(r"(?<!\\)\\[,!:;]|\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits)(?![A-Za-z])")
_SPACING_BLANK = re.compile(r"\\(?:quad|qquad|enspace|thinspace|medspace|thickspace|space)(?![A-Za-z])|(?<!\\)\\ |~|\\hspace\*?\{[^{}]*\}")
# `\phantom{-}1` only reserves space.
_PHANTOM = re.compile(r"\\[hv]?phantom\s*(?:\{[^{}]*\}|[^\s{])")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_BINOM_VARIANTS = re.compile(r"\\[dt]binom(?![A-Za-z])")
# Font and text commands all become `\text`, so one rule later handles units and words.
_TEXT_COMMANDS = re.compile(
    r"\\(?:text|textrm|textnormal|textbf|textit|textsf|texttt|mathrm|mathbf|mathit|mathsf|mathtt|mbox|hbox|emph)\s*\{"
)
# Decorations that do not change which object is meant.
_DECORATIONS = re.compile(r"\\(?:mathbb|mathcal|mathscr|mathfrak|boldsymbol|bm|vec|hat|widehat|tilde|widetilde|overrightarrow)\s*(?=\{)")
_REALS = re.compile(r"\\mathbb\s*\{?\s*R\s*\}?(?![A-Za-z])")
# `np.arcsin(x)`, `math.sqrt(2)`: code spelling of a function.
_CODE_PREFIX = re.compile(r"\b(?:np|numpy|math|sp|sympy)\.(?=[A-Za-z])")
_OPERATORNAME = re.compile(r"\\operatorname\*?\s*\{\s*([A-Za-z]+)\s*\}")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\^\s*\{\s*\\text\{\s*o\s*\}\s*\}|\u00b0|\\degree(?![A-Za-z])|\\circ(?![A-Za-z])")
_PERCENT = re.compile(r"\\%|%|\\text\{\s*percent\s*\}")
_CURRENCY = re.compile(r"\\\$|\\text\{\s*\\\$\s*\}|\\textdollar(?![A-Za-z])")
_MATH_DELIMITERS = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]")
# Spellings with one canonical form (relations, infinity, primes, the empty set …).
_REWRITES = [
    (re.compile(r"\\(?:leq|leqslant|le)(?![A-Za-z])"), "\\le "),
    (re.compile(r"\\(?:geq|geqslant|ge)(?![A-Za-z])"), "\\ge "),
    (re.compile(r"\\(?:neq|ne)(?![A-Za-z])"), "\\ne "),
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
    (re.compile(r"<="), "\\le "),
    (re.compile(r">="), "\\ge "),
    (re.compile(r"\\div(?![A-Za-z])"), "/"),
    (re.compile(r"\\(?:infin|infinity)(?![A-Za-z])|\binfinity\b"), "\\infty "),
    (re.compile(r"\\(?:varnothing|emptyset)(?![A-Za-z])"), "\\emptyset "),
    (re.compile(r"\^\s*\{\s*\\prime\s*\}|\^\s*\\prime(?![A-Za-z])|\\prime(?![A-Za-z])"), "'"),
    (re.compile(r"\\(?:dots|ldots|cdots)(?![A-Za-z])"), "\\dots "),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\boxed\s*(?=\{)"), ""),
]
# `1,000`, and the Indian grouping `10,00,000` (groups of two, then three).
_THOUSANDS = re.compile(r"(?<![\d.])([1-9]\d{0,2})((?:,\d{3})+|(?:,\d{2})+,\d{3})(?![\d])")
# `1,\! 000` and `1 {,} 000`: a thousands separator written with TeX spacing.
_SPACED_SEPARATOR = re.compile(r"(?<=\d)\s*(?:\{\s*,\s*\}|,\s*\\!)\s*(?=\d{3}(?!\d))")
# `x != 2` (code spelling), but not the factorial in `5!=120`.
_NOT_EQUAL = re.compile(r"(?<![\d)!])\s!=|(?<=[A-Za-z])!=(?=\s)")
# `1 1/2`: a whole number, a space and a proper fraction is a mixed number.
_MIXED_NUMBER = re.compile(r"(?<![\d.^_{/])\b(\d{1,6}) (\d{1,6})/(\d{1,6})\b(?![\d./^])")
_NUMBER_WORDS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                      "ninety": 90, "hundred": 100})
_NUMBER_WORD = re.compile(r"(?:\\text\{\s*)?([A-Za-z]+)(?:[- ]([A-Za-z]+))?(?:\s*\})?", re.IGNORECASE)
_SPACED_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?$")
_TRAILING = re.compile(r"[\s.,;:]+$")
_SPACES = re.compile(r"\s+")


def normalize_answer(answer: str) -> Normalized:
    """Canonical LaTeX for ``answer`` (see module doc); never raises."""
    text = sanitize(answer)[:MAX_ANSWER_CHARS]
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], text)
    currency = bool(_CURRENCY.search(text))
    if currency:
        text = _CURRENCY.sub(" ", text)
    text = _MATH_DELIMITERS.sub(" ", text)
    percent = bool(_PERCENT.search(text))
    if percent:
        text = _PERCENT.sub(" ", text)
    degrees = bool(_DEGREES.search(text))
    if degrees:
        text = _DEGREES.sub(" ", text)
    text = _SPACED_SEPARATOR.sub(",", text)
    text = _NOT_EQUAL.sub(lambda _m: " \\ne ", text)
    text = _FRAC_VARIANTS.sub(r"\\frac", text)
    text = _BINOM_VARIANTS.sub(r"\\binom", text)
    text = _SIZING.sub("", text)
    text = _PHANTOM.sub("", text)
    text = _SPACING_EMPTY.sub("", text)
    text = _SPACING_BLANK.sub(" ", text)
    text = _TEXT_COMMANDS.sub(r"\\text{", text)
    text = _REALS.sub(lambda _m: "(-\\infty,\\infty)", text)
    text = _DECORATIONS.sub("", text)
    text = _OPERATORNAME.sub(r"\\\1 ", text)
    text = _CODE_PREFIX.sub("", text)
    for pattern, replacement in _REWRITES:
        # A function, not a template: replacements hold backslashes.
        text = pattern.sub(lambda _m: replacement, text)
    text = _SPACES.sub(" ", text).strip()
    text = _drop_empty_text(text)
    text = _merge_thousands(text)
    text = _MIXED_NUMBER.sub(r"\1\\frac{\2}{\3}", text)
    text = _number_word(text)
    text = _TRAILING.sub("", text)
    return Normalized(text=text, percent=percent, degrees=degrees, currency=currency)


def _number_word(text: str) -> str:
    """``eight``, ``\\text{Twenty-one}``: an answer that is one number written in words."""
    m = _NUMBER_WORD.fullmatch(text)
    if m is None:
        return text
    first, second = (m.group(1) or "").lower(), (m.group(2) or "").lower()
    if first not in _NUMBER_WORDS:
        return text
    if not second:
        return str(_NUMBER_WORDS[first])
    if 20 <= _NUMBER_WORDS[first] <= 90 and _NUMBER_WORDS.get(second, 10) < 10:
        return str(_NUMBER_WORDS[first] + _NUMBER_WORDS[second])
    return text


def _drop_empty_text(text: str) -> str:
    return re.sub(r"\\text\{\s*\}", " ", text).strip() if "\\text{" in text else text


def _merge_thousands(text: str) -> str:
    """``1,000`` → ``1000``, only when every comma in the answer is such a separator.

    A comma is also how lists and points are written (``(0,100)``, ``2,345`` as two roots is rare but
    ``1,2`` is common), so separators are merged only in answers that hold no brackets and no other
    comma, and never after a leading zero.
    """
    if _SPACED_THOUSANDS.match(text):
        return text.replace(" ", "")
    if "," not in text or "(" in text or "[" in text or "\\{" in text:
        return text
    merged = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)
    return text if "," in merged else merged
