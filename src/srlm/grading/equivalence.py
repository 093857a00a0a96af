"""Is an extracted answer equal to the gold answer?

Tiers, cheapest first; the first that can decide does:

1. ``string``: the normalised LaTeX strings are identical.
2. ``structure``: both answers are parsed into shapes (``answer.py``) and compared piece by piece:
   numbers exactly as rationals, tuples in order, sets and bare lists in any order, intervals with
   their brackets, equations by their solved-for value, choice letters, text by its words, and
   expressions by value at fixed sample points (``values.py``). No sympy.
3. ``symbolic``: only when tier 2 cannot read an answer, sympy decides in a worker process with a
   hard time limit (``symbolic.py``).

Numbers are compared exactly as rationals (``1/2`` = ``0.5``, ``3`` = ``3.0``). A gold in scientific
notation or a decimal of three or more significant digits is treated as rounded (Minerva's
``4.5e33``, ``20.39``): a response written with *more* digits, or an exact fraction, matches when it
rounds to the gold at the gold's own precision (half a unit of its last digit; an exact irrational
answer too: ``2\\pi`` for a gold ``6.28``). A short decimal gold (``7.2``) is exact, and a response
with as few digits as the gold must match exactly (``6.28`` is not the gold ``2\\pi``). Benchmarks whose
golds are exact (GSM8K, MATH, AIME, AMC) get no rounding tolerance. The other way round, a response decimal of six or
more significant digits may stand for an exact gold that is not a literal (``0.0833333333`` for
``\\frac{1}{12}``, ``0.8660254`` for ``\\frac{\\sqrt3}{2}``) within one unit of its last digit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from srlm.grading.answer import INFINITY, NEG_INFINITY, Scalar, parse_answer, text_words
from srlm.grading.extract import last_number
from srlm.grading.values import (WIDE_POINTS_FROM, EvalError, close, contains, exact_value, fold_symbol_case,
                                   free_symbols, numeric_value)
from srlm.grading.normalize import Normalized, normalize_answer
from srlm.grading.symbolic import symbolic_equal
from srlm.grading.units import MULTIPLIERS, conversion_factor

STRING = "string"
STRUCTURE = "structure"
SYMBOLIC = "symbolic"
NO_ANSWER = "no_answer"

_SAMPLE_POINTS = 3
# A decimal gold of this many significant digits (or in scientific notation) is a rounded value.
_ROUNDED_GOLD_DIGITS = 3
# A response decimal of this many significant digits may stand for an exact irrational or fraction.
_LONG_DECIMAL_DIGITS = 6
# "(B) 12", "B", "B) 12", "\\textbf{(B)}": a letter in parentheses, or a bare A–E standing alone (not
# "A+B", "E'" or a word).
_CHOICE_IN_TEXT = re.compile(r"^\(([A-Z])\)|^([A-E])(?:$|[).:,](?:\s|$)|\s+(?=[\d(\\$-]))")
_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")
_PARENTHESISED_LETTER = re.compile(r"\(([A-Z])\)")
_LETTER_IN_PROSE = re.compile(r"(?<![A-Za-z'\u2019])\(?([A-E])\)?(?![A-Za-z'\u2019+\-=^_])")
_ARTICLE_AFTER = re.compile(r" (?!is\b|was\b|or\b|and\b|nor\b)[a-z]")
_NEGATION_BEFORE = re.compile(r"(?:\bnot|n't|\bnever)\s+(?:be\s+)?(?:either\s+)?\(?$", re.IGNORECASE)
_JOINED = re.compile(r"\)?\s*(?:,|or|and|nor)\s*\(?")
_CHOICE_AND_VALUE = re.compile(r"(?:\\text\{\s*\(([A-E])\)\s*\}|\(([A-E])\)|([A-E])[.)])\s*(\S.*)")
_NO_SOLUTION_WORDS = {"none", "nosolution", "nosolutions", "emptyset", "norealsolutions", "nosuchvalue"}


@dataclass(frozen=True)
class Gold:
    """A gold answer parsed once: normalised text, shape, and whether decimals are rounded values."""

    raw: str
    norm: Normalized
    canon: str
    shape: tuple
    tolerant: bool
    # `\textbf{(B) }7` (AMC golds): the letter and the value; a response may give either.
    choice_and_value: "tuple[str, Gold] | None" = None


@dataclass(frozen=True)
class Verdict:
    """The comparison result and the tier that decided it."""

    equal: bool
    tier: str


@lru_cache(maxsize=65536)
def parse_gold(gold: str, exact: bool = False) -> Gold:
    """Parse ``gold`` once (cached): every response to the same problem reuses the result. ``exact``: the
    gold is an exact value (its dataset's ``exact_answers``, e.g. GSM8K, MATH): no rounding tolerance."""
    norm = normalize_answer(gold)
    both = _CHOICE_AND_VALUE.fullmatch(norm.text)
    choice_and_value = ((both.group(1) or both.group(2) or both.group(3)), parse_gold(both.group(4), exact)) \
        if both else None
    return Gold(raw=gold, norm=norm, canon=_canon(norm.text), shape=parse_answer(norm.text),
                tolerant=not exact, choice_and_value=choice_and_value)


def _canon(text: str) -> str:
    return "".join(text.split())


@dataclass(frozen=True)
class _Context:
    tolerant: bool
    gold_percent: bool
    pred_percent: bool
    gold_degrees: bool
    pred_degrees: bool


def compare(pred: str | None, gold: str | Gold, exact: bool = False,
            symbolic_timeout: float | None = None) -> Verdict:
    """Compare an extracted answer with the gold answer (string or ``parse_gold`` result)."""
    if pred is None:
        return Verdict(False, NO_ANSWER)
    g = gold if isinstance(gold, Gold) else parse_gold(gold, exact)
    p_norm = normalize_answer(pred)
    p_canon = _canon(p_norm.text)
    if not p_canon:
        return Verdict(False, NO_ANSWER)
    if p_canon == g.canon:
        return Verdict(True, STRING)
    if g.shape[0] == "choice":
        return Verdict(_choice_letter(p_norm.text) == g.shape[1], STRUCTURE)
    if g.choice_and_value is not None:
        letter, value = g.choice_and_value
        given = _choice_letter(p_norm.text)
        if given is not None:
            return Verdict(given == letter, STRUCTURE)
        return compare(pred, value, symbolic_timeout=symbolic_timeout)
    if _DECIMAL_COMMA.fullmatch(p_canon) and g.shape[0] == "scalar" and g.shape[1].decimal:
        # `1,22` or `1000,99` against a decimal gold: a decimal comma (not thousands: the groups are not
        # three digits, or it starts with 0).
        p_norm = dataclasses.replace(p_norm, text=p_canon.replace(",", "."))
    ctx = _Context(g.tolerant, g.norm.percent, p_norm.percent, g.norm.degrees, p_norm.degrees)
    p_shape = parse_answer(p_norm.text)
    result = _match(g.shape, p_shape, ctx)
    if result is False and p_shape[0] == "text" and g.shape[0] != "text":
        # A sentence where a value was expected ("\\text{The answer is } 5"): its last number.
        number = last_number(p_norm.text, committed=True)
        if number is not None and number != p_norm.text:
            result = _match(g.shape, parse_answer(normalize_answer(number).text), ctx)
    if result is not None:
        return Verdict(result, STRUCTURE)
    # Plain-text math is fully covered by the parser above; sympy's LaTeX reader can only help
    # with LaTeX commands the parser does not know.
    if "\\" not in g.norm.text and "\\" not in p_norm.text:
        return Verdict(False, STRUCTURE)
    kwargs = {} if symbolic_timeout is None else {"timeout": symbolic_timeout}
    return Verdict(symbolic_equal(g.norm.text, p_norm.text, **kwargs) is True, SYMBOLIC)


def is_equivalent(pred: str | None, gold: str | Gold, exact: bool = False) -> bool:
    """Whether the extracted answer ``pred`` equals ``gold``."""
    return compare(pred, gold, exact).equal


def _choice_letter(text: str) -> str | None:
    flat = " ".join(re.sub(r"\\text|[{}]|\\", "", text).split())
    if len(set(_PARENTHESISED_LETTER.findall(flat))) > 1:
        return None  # "(B) or (C)": a hedge, not a choice
    m = _CHOICE_IN_TEXT.match(flat)
    if m:
        return m.group(1) or m.group(2)
    return _choice_in_prose(flat) if len(flat.split()) >= 3 else None


def _choice_in_prose(text: str) -> str | None:
    """The one letter a sentence picks ("for sure D, it can't be A or B" gives D): letters ruled out
    ("not A", "can't be A or B") and the article "A" ("A good guess") do not count; two letters left
    is a hedge (``None``)."""
    picked: set[str] = set()
    previous_end, previous_negated = -1, False
    for m in _LETTER_IN_PROSE.finditer(text):
        letter = m.group(1)
        if letter == "A" and _ARTICLE_AFTER.match(text, m.end()):
            continue  # "A good guess": the article
        negated = _NEGATION_BEFORE.search(text, max(0, m.start() - 20), m.start()) is not None or (
            previous_negated and _JOINED.fullmatch(text, previous_end, m.start()) is not None)
        previous_end, previous_negated = m.end(), negated
        if not negated:
            picked.add(letter)
    return picked.pop() if len(picked) == 1 else None


# --- shapes ----------------------------------------------------------------------------------------
# Each matcher returns True, False, or None ("cannot tell": an answer outside the parser's grammar).


def _match(g: tuple, p: tuple, ctx: _Context) -> bool | None:
    gk, pk = g[0], p[0]
    if pk == "rel" and gk != "rel":
        return _match_against_relation(g, p, ctx)
    if gk == "text" or pk == "text":
        return _match_text(g, p)
    if gk == "choice" or pk == "choice":
        return gk == pk and g[1] == p[1]
    if gk == "empty" or pk == "empty":
        return gk == pk or (pk in ("set", "list") and not p[1]) or (gk in ("set", "list") and not g[1])
    if gk == "rel":
        return _match_relation(g, p, ctx)
    if gk == "scalar":
        if pk == "ratio":
            return _match_ratio(g, p, ctx)
        if pk == "scalar":
            return _match_scalars(g[1], p[1], ctx)
        if pk in ("list", "set") and p[1]:
            # `\{3\}`, or the same value twice (`\frac{3}{5} \text{ or } 0.6`).
            return _combine(_match(g, item, ctx) for item in p[1])
        return False
    if pk == "scalar" and gk in ("list", "set") and len(g[1]) == 1:
        return _match(g[1][0], p, ctx)
    if gk == "seq":
        if pk == "seq":
            if (g[1], g[2]) != (p[1], p[2]):
                return False
            return _ordered(g[3], p[3], ctx)
        if pk == "list" and (g[1], g[2]) == ("(", ")"):
            return _ordered(g[3], p[1], ctx)
        if pk == "matrix":
            return _ordered(g[3], _vector(p), ctx) if _vector(p) else False
        return False
    if gk in ("set", "list"):
        if pk in ("set", "list"):
            if gk == pk == "list" and (_distinct_labels(g[1]) and not any(i[0] == "rel" for i in p[1])
                                       or _distinct_labels(p[1]) and not any(i[0] == "rel" for i in g[1])):
                # `a=1, b=2` against `1, 2`: the values are read in the order of the labels.
                return _ordered(g[1], p[1], ctx)
            return _unordered(g[1], p[1], ctx)
        if pk == "seq" and gk == "list" and (p[1], p[2]) == ("(", ")"):
            return _unordered(g[1], p[3], ctx)
        return False
    if gk == "ratio" or pk == "ratio":
        return _match_ratio(g, p, ctx)
    if gk == "union":
        if pk == "union":
            return _unordered(g[1], p[1], ctx)
        return False
    if gk == "matrix":
        if pk == "matrix":
            if len(g[1]) != len(p[1]) or any(len(a) != len(b) for a, b in zip(g[1], p[1])):
                return False
            return _ordered([c for row in g[1] for c in row], [c for row in p[1] for c in row], ctx)
        vector = _vector(g)
        if vector and pk in ("seq", "list"):
            return _ordered(vector, p[3] if pk == "seq" else p[1], ctx)
        return False
    return False


def _match_ratio(g: tuple, p: tuple, ctx: _Context) -> bool | None:
    """``3:5`` equals ``6:10`` and ``\\frac{3}{5}``; longer ratios (times) compare part by part."""
    def as_fraction(node: tuple) -> Fraction | None:
        if node[0] == "ratio" and len(node[1]) == 2 and all(i[0] == "scalar" and i[1].tree for i in node[1]):
            a, b = (exact_value(i[1].tree) for i in node[1])
            return a / b if a is not None and b else None
        if node[0] == "scalar" and node[1].tree is not None:
            return exact_value(node[1].tree)
        return None

    if g[0] == p[0] == "ratio" and {len(g[1]), len(p[1])} == {2, 3}:
        # A time with and without its seconds: `20:34` is `20:34:00`.
        longer, shorter = (g, p) if len(g[1]) == 3 else (p, g)
        seconds = longer[1][2]
        if seconds[0] == "scalar" and seconds[1].text == "00":
            return _ordered(longer[1][:2], shorter[1], ctx)
        return False
    if g[0] == p[0] == "ratio" and len(g[1]) != 2:
        return _ordered(g[1], p[1], ctx)
    a, b = as_fraction(g), as_fraction(p)
    if a is not None and b is not None:
        return a == b
    if g[0] == p[0] == "ratio":
        return _ordered(g[1], p[1], ctx)
    return False


def _match_text(g: tuple, p: tuple) -> bool:
    def words(node: tuple) -> str:
        if node[0] == "text":
            return node[1]
        if node[0] == "scalar":
            return text_words(node[1].text)
        if node[0] == "choice":
            return node[1].lower()
        if node[0] == "empty":
            return "emptyset"
        return ""

    a, b = words(g), words(p)
    if g[0] == "empty" or p[0] == "empty":
        return a in _NO_SOLUTION_WORDS and b in _NO_SOLUTION_WORDS
    return bool(a) and a == b


def _vector(node: tuple) -> list | None:
    rows = node[1]
    if all(len(r) == 1 for r in rows):
        return [r[0] for r in rows]
    if len(rows) == 1:
        return list(rows[0])
    return None


def _distinct_labels(items) -> bool:
    """Every item is ``label = value`` and no two labels are the same (not the roots ``x=2, x=3``)."""
    labels = []
    for item in items:
        found = _label_and_value(item) if item[0] == "rel" else None
        if found is None:
            return False
        labels.append(found[0])
    return len({repr(label) for label in labels}) == len(labels)


def _combine(results) -> bool | None:
    undecided = False
    for r in results:
        if r is False:
            return False
        if r is None:
            undecided = True
    return None if undecided else True


def _ordered(gs, ps, ctx: _Context) -> bool | None:
    if len(gs) != len(ps):
        return False
    return _combine(_match(a, b, ctx) for a, b in zip(gs, ps))


def _unordered(gs, ps, ctx: _Context) -> bool | None:
    """Set equality: every gold item has an equal response item and the other way round."""
    if not gs or not ps:
        return len(gs) == len(ps)
    table = [[_match(a, b, ctx) for b in ps] for a in gs]
    gold_covered = [any(r is True for r in row) for row in table]
    pred_covered = [any(row[j] is True for row in table) for j in range(len(ps))]
    if all(gold_covered) and all(pred_covered):
        return True
    undecided = any(r is None for row in table for r in row)
    return None if undecided else False


# --- equations and inequalities --------------------------------------------------------------------


def _is_symbol(node: tuple) -> bool:
    return node[0] == "scalar" and node[1].tree is not None and node[1].tree[0] == "sym"


def _is_name(tree: tuple) -> bool:
    """A variable, a product of variables (``AB``), their absolute value (``|AB|``), a function of
    them (``\\sin x``, ``f^{-1}(x)``): not a sum or a power (``x^2 + y^2 = 1`` is an equation)."""
    kind = tree[0]
    if kind == "sym":
        return True
    if kind in ("mul",):
        return _is_name(tree[1]) and _is_name(tree[2])
    if kind == "abs":
        return _is_name(tree[1])
    if kind == "fn":
        return _is_name(tree[2])
    if kind == "pow":
        return tree[1][0] == "sym" and tree[2] == ("neg", ("num", Fraction(1)))
    return False


def _is_label(node: tuple) -> bool:
    """What names a value rather than states one: ``x``, ``AB``, ``|AB|``, ``f(x)``, ``\\sin x``,
    ``(p,q,r)``, ``A:B``."""
    if node[0] == "scalar":
        return node[1].tree is not None and _is_name(node[1].tree)
    if node[0] == "choice":
        return True  # a capital letter read as a choice, here a point's name (`A:B = 1`)
    if node[0] in ("seq", "ratio"):
        items = node[3] if node[0] == "seq" else node[1]
        return all(_is_label(item) for item in items)
    return False


def _names(node: tuple) -> frozenset[str]:
    if node[0] == "scalar":
        return free_symbols(node[1].tree) if node[1].tree is not None else frozenset()
    if node[0] == "choice":
        return frozenset((node[1],))
    items = node[3] if node[0] == "seq" else node[1] if node[0] in ("ratio", "list", "set") else ()
    found: frozenset[str] = frozenset()
    for item in items:
        found |= _names(item)
    return found


# `y = …`, `f(x) = …`, `f^{-1}(x) = …`: labels that all name "the function's value", so two of them
# may differ (`f^{-1}(x) = \frac{x-1}{2}` and `y = \frac{x-1}{2}`); any other two labels must agree.
_OUTPUT_LABEL = re.compile(r"y|[A-Za-z](?:\^\{-1\})?\([A-Za-z]\)")


def _is_function_label(node: tuple) -> bool:
    """``f(x)``, ``f^{-1}(x)``: its argument may appear on the other side."""
    return _is_output_label(node) and "(" in node[1].text


def _is_output_label(node: tuple) -> bool:
    return node[0] == "scalar" and _OUTPUT_LABEL.fullmatch(node[1].text) is not None


def _label_and_value(rel: tuple) -> tuple[tuple, tuple] | None:
    """(label, value) of ``x = 3``, ``3 = x``, ``|AB| = 1``, ``(p,q,r) = (3,2,7)``, ``f(x) = 2x+1``;
    ``None`` for an equation that is not solved for a label (``x = 2x + 1``)."""
    ops, parts = rel[1], rel[2]
    if any(op != "=" for op in ops) or len(parts) != 2:
        return None
    lhs, rhs = parts
    if _is_label(lhs) and (not (_names(lhs) & _names(rhs)) or _is_function_label(lhs)):
        return lhs, rhs
    if _is_label(rhs) and not _is_label(lhs) and not (_names(lhs) & _names(rhs)):
        return rhs, lhs
    return None


def _solved_value(rel: tuple) -> tuple | None:
    """The value side of ``x = 3`` (or ``3 = x``, or the last part of ``x = 1 + 2 = 3``)."""
    ops, parts = rel[1], rel[2]
    if any(op != "=" for op in ops):
        return None
    if len(parts) > 2:
        return parts[-1]
    found = _label_and_value(rel)
    return found[1] if found else None


def _mentions(node: tuple, name: str) -> bool:
    if node[0] == "scalar":
        return node[1].tree is not None and name in free_symbols(node[1].tree)
    return False


def _match_against_relation(g: tuple, p: tuple, ctx: _Context) -> bool | None:
    """A gold value against a response such as ``x = 3``, ``2\\sqrt5 \\approx 4.47`` or ``x > 3``."""
    value = _solved_value(p)
    if value is not None:
        return _match(g, value, ctx)
    interval = _inequality_interval(p)
    if interval is not None:
        return _match(g, interval, ctx)
    if all(op == "=" for op in p[1]):
        # A chain of equal values (`\frac{5}{2} = 2.5`, `\frac{x^2-1}{x-1} = x+1`): the gold may be its
        # last or first member. With variables the chain must be an identity (`x = 2x+1` is an equation
        # to solve, not the value 2x+1).
        if _names(("list", p[2])) and _match(p[2][0], p[2][-1], ctx) is not True:
            return False
        last = _match(g, p[2][-1], ctx)
        return True if last else _match(g, p[2][0], ctx)
    return False


def _match_relation(g: tuple, p: tuple, ctx: _Context) -> bool | None:
    g_value = _solved_value(g)
    if p[0] != "rel":
        if g_value is not None:
            return _match(g_value, p, ctx)
        if all(op == "=" for op in g[1]) and not _names(("list", g[2])):
            # A gold written as a chain of equal values (`\frac{\sqrt3}{3} \approx 0.577`): its first member.
            return _match(g[2][0], p, ctx)
        interval = _inequality_interval(g)
        return _match(interval, p, ctx) if interval is not None else False
    if g[1] == ("=",) and p[1] == ("=",):
        (gl, gr), (pl, pr) = g[2], p[2]
        if _match(gl, pl, ctx) is True:
            return _match(gr, pr, ctx)
        if _match(gl, pr, ctx) is True:
            return _match(gr, pl, ctx)
        g_found, p_found = _label_and_value(g), _label_and_value(p)
        if g_found and p_found and _is_output_label(g_found[0]) and _is_output_label(p_found[0]) \
                and _match(g_found[1], p_found[1], ctx):
            return True  # `f^{-1}(x) = \frac{x-1}{2}` and `y = \frac{x-1}{2}`
        # Different labels (`\sin x = …` and `\cos x = …`, `a = 1` and `b = 1`) are different
        # statements unless the equations are the same up to rearrangement.
        return _equations_equivalent(g, p)
    g_interval, p_interval = _inequality_interval(g), _inequality_interval(p)
    if g_interval is not None and p_interval is not None:
        return _match(g_interval, p_interval, ctx)
    if len(g[1]) == len(p[1]) and g[1] == p[1]:
        return _ordered(g[2], p[2], ctx)
    return False


def _equations_equivalent(g: tuple, p: tuple) -> bool | None:
    """``y = 2x + 1`` ≡ ``2x - y + 1 = 0``: lhs − rhs agree up to a constant non-zero factor."""
    trees = []
    for rel in (g, p):
        lhs, rhs = rel[2]
        if lhs[0] != "scalar" or rhs[0] != "scalar":
            return False
        if lhs[1].tree is None or rhs[1].tree is None:
            return None
        trees.append(("add", lhs[1].tree, ("neg", rhs[1].tree)))
    ratio = None
    agreed = 0
    for point in range(_SAMPLE_POINTS + 1):
        try:
            a, b = numeric_value(trees[0], point), numeric_value(trees[1], point)
        except EvalError:
            continue
        if close(a, 0) or close(b, 0):
            if close(a, 0) and close(b, 0):
                continue
            return False
        r = a / b
        if ratio is None:
            ratio = r
        elif not close(r, ratio, rel=1e-8):
            return False
        agreed += 1
    return agreed >= 2


def _substitute(tree: tuple, name: str, value: Fraction) -> tuple:
    if tree[0] == "sym":
        return ("num", value) if tree[1] == name else tree
    return tuple(_substitute(c, name, value) if isinstance(c, tuple) else c for c in tree)


def _solve_linear(lhs: tuple, rhs: tuple, op: str) -> tuple[tuple, str] | None:
    """``-x > -1`` → (1, "<"); ``2x + 1 \\le 5`` → (2, "<="): an inequality linear in one variable
    with exact coefficients, solved for the variable; ``None`` otherwise."""
    if lhs[0] != "scalar" or rhs[0] != "scalar" or lhs[1].tree is None or rhs[1].tree is None:
        return None
    tree = ("add", lhs[1].tree, ("neg", rhs[1].tree))
    names = free_symbols(tree)
    if len(names) != 1:
        return None
    (name,) = names
    values = [exact_value(_substitute(tree, name, Fraction(k))) for k in (0, 1, 2)]
    if any(v is None for v in values):
        return None
    b, a = values[0], values[1] - values[0]
    if a == 0 or values[2] != b + 2 * a:
        return None
    # a·x + b op 0  →  x op −b/a (the relation flips when a < 0)
    if a < 0:
        op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    bound = -b / a
    return ("scalar", Scalar(text=str(bound), tree=("num", bound))), op


def _inequality_interval(rel: tuple) -> tuple | None:
    """``x > 3`` → (3, ∞); ``-1 \\le x < 2`` → [-1, 2); ``x \\ne 2`` → (-∞, 2) ∪ (2, ∞); else ``None``."""
    ops, parts = rel[1], rel[2]
    if ops == ("!=",) and _is_symbol(parts[0]):
        below = ("seq", "(", ")", (("scalar", NEG_INFINITY), parts[1]))
        above = ("seq", "(", ")", (parts[1], ("scalar", INFINITY)))
        return ("union", (below, above))
    if any(op not in ("<", "<=", ">", ">=") for op in ops):
        return None
    if len(parts) == 2:
        lhs, rhs = parts
        if _is_symbol(lhs):
            var_first, bound, op = True, rhs, ops[0]
        elif _is_symbol(rhs):
            var_first, bound, op = False, lhs, ops[0]
        else:
            solved = _solve_linear(lhs, rhs, ops[0])
            if solved is None:
                return None
            var_first, bound, op = True, solved[0], solved[1]
        if not var_first:
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        if op in ("<", "<="):
            return ("seq", "(", "]" if op == "<=" else ")", (("scalar", NEG_INFINITY), bound))
        return ("seq", "[" if op == ">=" else "(", ")", (bound, ("scalar", INFINITY)))
    if len(parts) == 3 and _is_symbol(parts[1]):
        if all(op in ("<", "<=") for op in ops):
            lo, hi, (op_lo, op_hi) = parts[0], parts[2], ops
        elif all(op in (">", ">=") for op in ops):
            lo, hi, (op_hi, op_lo) = parts[2], parts[0], ops
        else:
            return None
        return ("seq", "[" if op_lo.endswith("=") else "(", "]" if op_hi.endswith("=") else ")", (lo, hi))
    return None


# --- numbers and expressions -----------------------------------------------------------------------


def _match_scalars(g: Scalar, p: Scalar, ctx: _Context) -> bool | None:
    if g.text == p.text and g.tree is not None and (g.unit == p.unit or not g.unit or not p.unit):
        return True
    undecided = False
    for gs in (g, g.alt):
        for ps in (p, p.alt):
            if gs is None or ps is None:
                continue
            result = _match_scalar(gs, ps, ctx)
            if result:
                return True
            undecided = undecided or result is None
    return None if undecided else False


def _match_scalar(g: Scalar, p: Scalar, ctx: _Context) -> bool | None:
    if g.tree is None or p.tree is None:
        if "too_large" in (g.failure, p.failure):
            return False
        return None
    scale = Fraction(1)
    if p.unit in MULTIPLIERS and g.unit not in MULTIPLIERS:
        scale = MULTIPLIERS[p.unit]
    elif g.unit in MULTIPLIERS and p.unit not in MULTIPLIERS:
        scale = 1 / MULTIPLIERS[g.unit]
    elif g.unit and p.unit:
        factor = conversion_factor(p.unit, g.unit)
        if factor is False:
            return False
        scale = factor or Fraction(1)
    if contains(g.tree, "inf") or contains(p.tree, "inf"):
        return g.tree == p.tree
    for candidate, candidate_scale in _readings(p, scale, ctx):
        result = _values_equal(g, candidate, candidate_scale, ctx)
        if result:
            return True
    return False


def _readings(p: Scalar, scale: Fraction, ctx: _Context):
    """The response as written, and as re-read when only one side has a % or degree sign."""
    yield p, scale
    if ctx.pred_percent and not ctx.gold_percent:
        yield p, scale / 100
    if ctx.gold_percent and not ctx.pred_percent:
        yield p, scale * 100


def _values_equal(g: Scalar, p: Scalar, scale: Fraction, ctx: _Context) -> bool:
    gv = exact_value(g.tree)
    pv = exact_value(p.tree)
    if gv is not None and pv is not None:
        return _rationals_equal(gv, pv * scale, g, p, ctx, scale)
    symbols = free_symbols(g.tree) | free_symbols(p.tree)
    if not symbols:
        try:
            a = numeric_value(g.tree)
            b = numeric_value(p.tree) * float(scale)
        except EvalError:
            return g.tree == p.tree
        if ctx.gold_degrees and contains(p.tree, "pi") and not contains(g.tree, "pi"):
            b = b * 180 / math.pi
        if ctx.pred_degrees and contains(g.tree, "pi") and not contains(p.tree, "pi"):
            b = b * math.pi / 180
        # A short decimal never stands for an irrational value (`4.47` is not `2\sqrt{5}`); a long one may
        # (see `_long_decimal`); an exact irrational answer rounds to a rounded gold (`\frac{\sqrt3}{2}`
        # for Minerva's `0.866`).
        if not a.imag and not b.imag:
            if _long_decimal(g, p):
                return abs(a.real - b.real) <= 10.0 ** p.last_digit * float(scale) * (1 + 1e-9)
            if _rounded(g, p, ctx):
                return abs(a.real - b.real) <= 0.5 * 10.0 ** g.last_digit * (1 + 1e-9)
        return close(a, b)
    if _same_function(g.tree, p.tree, float(scale)):
        return True
    # `C e^{-2t}` against `c e^{-2t}`: names that differ only in case are retried case-folded.
    g_symbols, p_symbols = free_symbols(g.tree), free_symbols(p.tree)
    if g_symbols != p_symbols and {n.lower() for n in g_symbols} == {n.lower() for n in p_symbols}:
        return _same_function(fold_symbol_case(g.tree), fold_symbol_case(p.tree), float(scale))
    return False


def _rounded(g: Scalar, p: Scalar, ctx: _Context) -> bool:
    """Whether ``g`` is a rounded value that ``p`` may match within half a unit of its last digit.

    The gold must read as a measurement: scientific notation (``4.5e33``) or a decimal of at least
    three significant digits (``20.39``). A short decimal (``0.1``, ``7.2``) is an exact value, so
    ``7.21`` is not ``7.2``. The response must carry more precision than the gold (more digits, or
    an exact fraction: ``0.333`` accepts ``\\frac{1}{3}``)."""
    if not (ctx.tolerant and g.decimal and g.last_digit is not None):
        return False
    if not (g.scientific or g.significant_digits >= _ROUNDED_GOLD_DIGITS):
        return False
    return p.last_digit is None or p.last_digit < g.last_digit


def _long_decimal(g: Scalar, p: Scalar) -> bool:
    """``p`` is a long decimal (``0.0833333333``) that may stand for the exact, non-literal gold
    (``\\frac{1}{12}``, ``\\frac{\\sqrt3}{2}``): the same rule for rational and irrational golds."""
    return (p.decimal and p.last_digit is not None and p.significant_digits >= _LONG_DECIMAL_DIGITS
            and g.last_digit is None)


def _rationals_equal(gv: Fraction, pv: Fraction, g: Scalar, p: Scalar, ctx: _Context,
                     scale: Fraction = Fraction(1)) -> bool:
    """``pv`` is the response's value already multiplied by ``scale`` (a unit or % conversion)."""
    if gv == pv:
        return True
    if _long_decimal(g, p):
        # One unit of the response's last digit: rounded or truncated.
        return abs(pv - gv) <= Fraction(10) ** p.last_digit * abs(scale)
    if _rounded(g, p, ctx):
        return abs(pv - gv) <= Fraction(1, 2) * Fraction(10) ** g.last_digit
    return False


def _same_function(a_tree: tuple, b_tree: tuple, scale: float) -> bool:
    """Equal at every sample point where both have a value (at least two such points); step functions
    are also compared at widely spread points (`values.sample_value`)."""
    agreed = 0
    points = list(range(_SAMPLE_POINTS))
    if any(contains(t, kind) for t in (a_tree, b_tree) for kind in ("floor", "ceil", "fact", "binom")):
        points += list(range(WIDE_POINTS_FROM, WIDE_POINTS_FROM + 6))
    for point in points:
        try:
            a = numeric_value(a_tree, point)
            b = numeric_value(b_tree, point) * scale
        except EvalError:
            continue
        if not close(a, b, rel=1e-8):
            return False
        agreed += 1
    return agreed >= 2 or (agreed == 1 and a_tree == b_tree)
