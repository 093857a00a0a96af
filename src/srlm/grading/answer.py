"""Parse a normalised answer into its shape: number/expression, tuple, interval, set, list, union,
matrix, equation or inequality, multiple-choice letter, or plain text.

Shapes are tuples (cheap to build, hashable, cached with the gold):

* ``("scalar", Scalar)``: one number or expression
* ``("seq", open, close, items)``: ``(a,b)``, ``[a,b)``, ``\\langle a,b\\rangle`` (tuples and intervals)
* ``("set", items)``: ``\\{a,b\\}``; ``("list", items)``: bare ``a, b`` or "a or b"; ``("empty",)``
* ``("union", items)``: ``A \\cup B``; ``("matrix", rows)``; ``("ratio", items)``: ``3:5``
* ``("rel", ops, parts)``: ``x = 3``, ``a < x \\le b`` (ops are ``=``, ``<``, ``<=``, ``>``, ``>=``, ``!=``)
* ``("choice", letter)``: ``\\text{(B)}``; ``("text", words)``: ``\\text{Monday}``
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from fractions import Fraction

from srlm.grading.values import contains, expand_pm
from srlm.grading.expression import FUNCTIONS, INF, ParseError, TooLarge, expand_repeating_decimals, parse_tokens
from srlm.grading.tokens import Token, TokenizeError, tokenize
from srlm.grading.units import SINGLE_LETTER_UNITS, unit_scale

_OPENERS = {"(", "[", "{", "\\{"}
_CLOSERS = {")", "]", "}", "\\}"}
_MATRIX_ENVIRONMENTS = {"pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "matrix", "smallmatrix", "array"}
_RELATION_OPS = {"=": "=", "<": "<", ">": ">"}
_RELATION_CMDS = {"le": "<=", "ge": ">=", "ne": "!=", "approx": "=", "in": "=", "equiv": "=", "sim": "=",
                  "leq": "<=", "geq": ">=", "lt": "<", "gt": ">"}
_LIST_WORDS = {"or", "and"}
# `(P)` is a choice whatever the letter; a bare letter only if it is one of the usual A–E.
_CHOICE = re.compile(r"^\(([A-Z])\)$|^([A-E])$")
_MAX_ITEMS = 64


@dataclass(frozen=True)
class Scalar:
    """One number or expression.

    ``tree`` is the expression tree, or ``None`` with ``failure`` = ``"syntax"`` (outside this
    parser's grammar, a job for the symbolic tier) or ``"too_large"`` (refused on size).
    ``last_digit`` is the power of ten of the last written digit when the scalar is a plain number
    literal (``4.5e33`` → 32, ``0.25`` → -2, ``12`` → 0); ``decimal`` says it was written with a
    point or an exponent, i.e. it may be a rounded value; ``significant_digits`` counts its digits;
    ``scientific`` says it was written with an exponent (``4.5e33``, ``4.5 \\times 10^{33}``).
    ``unit`` is a stripped trailing unit (``cm^2``); ``alt`` is a second reading without a trailing
    one-letter unit (``\\frac{37}{4} m`` may be 37/4 metres or 37/4 times m).
    """

    text: str
    tree: tuple | None
    failure: str | None = None
    unit: str | None = None
    last_digit: int | None = None
    decimal: bool = False
    alt: "Scalar | None" = None
    significant_digits: int = 0
    scientific: bool = False


INFINITY = Scalar(text="\\infty", tree=INF)
NEG_INFINITY = Scalar(text="-\\infty", tree=("neg", INF))


def parse_answer(text: str) -> tuple:
    """Shape of normalised answer ``text``; never raises."""
    try:
        tokens = tokenize(expand_repeating_decimals(text))
    except TokenizeError:
        return ("scalar", Scalar(text=_canon(text), tree=None, failure="syntax"))
    return _node(tokens, 0)


def _canon(text: str) -> str:
    return "".join(text.split())


def _tokens_text(tokens: list[Token]) -> str:
    out = []
    for kind, value in tokens:
        if kind == "cmd":
            out.append("\\" + value)
        elif kind == "text":
            out.append("\\text{" + value + "}")
        elif kind in ("begin", "end"):
            out.append(f"\\{kind}{{{value}}}")
        else:
            out.append(value)
    return " ".join(out)


def text_words(text: str) -> str:
    """Lower-case letters and digits only: how two plain-text answers are compared."""
    return re.sub(r"[^a-z0-9]", "", text.replace("\\text", "").lower())


def _node(tokens: list[Token], depth: int) -> tuple:
    if depth > 8:
        return ("scalar", Scalar(text=_canon(_tokens_text(tokens)), tree=None, failure="too_large"))
    if not tokens:
        return ("text", "")
    matrix = _matrix(tokens, depth)
    if matrix is not None:
        return matrix
    if len(tokens) >= 4 and tokens[0] in (Token("op", "["), Token("op", "(")) \
            and tokens[-1] in (Token("op", "]"), Token("op", ")")) and tokens[1].kind == "begin":
        # `\left[\begin{array}{cc}…\end{array}\right]`: the brackets are the matrix's own.
        matrix = _matrix(tokens[1:-1], depth)
        if matrix is not None:
            return matrix
    parts = _split(tokens, _is_list_separator)
    if len(parts) > 1:
        items = [p for p in parts if p][:_MAX_ITEMS]
        if len(items) == 1:
            return _node(items[0], depth + 1)
        return ("list", _flatten(_node(p, depth + 1) for p in items))
    parts = _split(tokens, lambda t: t.kind == "cmd" and t.value == "cup")
    if len(parts) > 1 and all(parts):
        nodes = tuple(_node(p, depth + 1) for p in parts[:_MAX_ITEMS])
        if all(n[0] in ("set", "empty") for n in nodes):
            # `\{1,2\} \cup \{3\}` is the set `\{1,2,3\}`
            items = tuple(item for n in nodes if n[0] == "set" for item in n[1])[:_MAX_ITEMS]
            return ("set", items) if items else ("empty",)
        return ("union", nodes)
    # `A:B = 1` is a labelled value: relations bind looser than ratios.
    relation = _relation(tokens, depth)
    if relation is not None:
        return relation
    parts = _split(tokens, lambda t: t == Token("op", ":"))
    if len(parts) > 1 and all(parts):
        # 3:5 (a ratio) or 4:51:06 (a time)
        return ("ratio", tuple(_node(p, depth + 1) for p in parts[:_MAX_ITEMS]))
    matrix_sum = _matrix_sum(tokens, depth)
    if matrix_sum is not None:
        return matrix_sum
    bracketed = _bracketed(tokens, depth)
    if bracketed is not None:
        return bracketed
    choice = _choice(tokens)
    if choice is not None:
        return ("choice", choice)
    return _scalar_node(tokens)


def _flatten(nodes) -> tuple:
    """Items of a list or set, with `a \\pm b` items (lists themselves) spliced in."""
    out: list[tuple] = []
    for node in nodes:
        out.extend(node[1] if node[0] == "list" else (node,))
    return tuple(out[:_MAX_ITEMS])


def _split(tokens: list[Token], is_separator) -> list[list[Token]]:
    """Split at separators outside every bracket (intervals like ``[a,b)`` count as brackets)."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        kind, value = tok
        if (kind == "op" and value in _OPENERS) or kind == "begin" or (kind == "cmd" and value in ("langle", "lfloor", "lceil")):
            depth += 1
        elif (kind == "op" and value in _CLOSERS) or kind == "end" or (kind == "cmd" and value in ("rangle", "rfloor", "rceil")):
            depth -= 1
        elif depth == 0 and is_separator(tok):
            parts.append([])
            continue
        parts[-1].append(tok)
    return parts


def _is_list_separator(tok: Token) -> bool:
    kind, value = tok
    if kind == "op":
        return value in ",;"
    if kind in ("word", "text"):
        return value.lower() in _LIST_WORDS
    return False


def _matrix(tokens: list[Token], depth: int) -> tuple | None:
    first, last = tokens[0], tokens[-1]
    if first.kind != "begin" or first.value not in _MATRIX_ENVIRONMENTS or last != Token("end", first.value):
        return None
    inner = tokens[1:-1]
    level = 0
    for tok in inner:
        level += (tok.kind == "begin") - (tok.kind == "end")
        if level < 0:
            return None  # `\begin{pmatrix}…\end{pmatrix} + \begin{pmatrix}…\end{pmatrix}`
    if first.value == "array" and inner and inner[0] == Token("op", "{"):
        close = next((k for k, t in enumerate(inner) if t == Token("op", "}")), None)
        inner = inner[close + 1:] if close is not None else inner
    rows = [r for r in _split(inner, lambda t: t == Token("op", "\\\\")) if r]
    if not rows or len(rows) > _MAX_ITEMS:
        return None
    table = []
    for row in rows:
        cells = _split(row, lambda t: t == Token("op", "&"))
        table.append(tuple(_node(c, depth + 1) for c in cells[:_MAX_ITEMS]))
    return ("matrix", tuple(table))


def _matrix_sum(tokens: list[Token], depth: int) -> tuple | None:
    """``\\begin{pmatrix}1\\\\2\\end{pmatrix} + 2\\begin{pmatrix}3\\\\4\\end{pmatrix}``: a sum of matrices
    (each with an optional numeric factor) is the matrix of the summed cells, left unevaluated as
    cell expressions."""
    if not any(t.kind == "begin" for t in tokens) or not any(t in (Token("op", "+"), Token("op", "-")) for t in tokens):
        return None
    terms: list[tuple[int, list[Token]]] = []
    sign, current, depth_env = 1, [], 0
    for tok in tokens:
        if tok.kind == "begin":
            depth_env += 1
        elif tok.kind == "end":
            depth_env -= 1
        if depth_env == 0 and tok in (Token("op", "+"), Token("op", "-")) and current:
            terms.append((sign, current))
            sign, current = (1 if tok.value == "+" else -1), []
            continue
        if depth_env == 0 and tok == Token("op", "-") and not current:
            sign = -sign
            continue
        current.append(tok)
    terms.append((sign, current))
    if len(terms) < 2:
        return None
    total: list[list[tuple]] | None = None
    for term_sign, term in terms:
        start = next((k for k, t in enumerate(term) if t.kind == "begin"), None)
        if start is None:
            return None
        matrix = _matrix(term[start:], depth)
        if matrix is None or any(c[0] != "scalar" or c[1].tree is None for row in matrix[1] for c in row):
            return None
        try:
            factor = parse_tokens(term[:start]) if start else ("num", Fraction(1))
        except ParseError:
            return None
        if term_sign < 0:
            factor = ("neg", factor)
        cells = [[("mul", factor, c[1].tree) for c in row] for row in matrix[1]]
        if total is None:
            total = cells
        elif [len(r) for r in total] != [len(r) for r in cells]:
            return None
        else:
            total = [[("add", a, b) for a, b in zip(ra, rb)] for ra, rb in zip(total, cells)]
    rows = tuple(tuple(("scalar", Scalar(text=repr(c), tree=c)) for c in row) for row in total)
    return ("matrix", rows)


def _relation(tokens: list[Token], depth: int) -> tuple | None:
    ops: list[str] = []

    def is_relation(tok: Token) -> bool:
        kind, value = tok
        if kind == "op" and value in _RELATION_OPS:
            ops.append(_RELATION_OPS[value])
            return True
        if kind == "cmd" and value in _RELATION_CMDS:
            ops.append(_RELATION_CMDS[value])
            return True
        return False

    parts = _split(tokens, is_relation)
    if len(parts) == 1:
        return None
    if not all(parts):
        # "= 5" or "x =": keep what is there.
        kept = [p for p in parts if p]
        return _node(kept[-1], depth + 1) if kept else ("text", "")
    return ("rel", tuple(ops), tuple(_node(p, depth + 1) for p in parts[:_MAX_ITEMS]))


def _bracketed(tokens: list[Token], depth: int) -> tuple | None:
    first, last = tokens[0], tokens[-1]
    open_ = _bracket_char(first, opening=True)
    close = _bracket_char(last, opening=False)
    if open_ is None or close is None or not _outer_pair(tokens):
        return None
    inner = tokens[1:-1]
    if open_ == "{":
        if first.value != "\\{":
            return _node(inner, depth + 1) if inner else None
        if not inner:
            return ("empty",)
        items = [p for p in _split(inner, lambda t: t == Token("op", ",")) if p]
        return ("set", _flatten(_node(p, depth + 1) for p in items[:_MAX_ITEMS]))
    items = _split(inner, lambda t: t == Token("op", ","))
    if len(items) < 2:
        items = _split(inner, lambda t: t == Token("op", ";"))  # `(1; 2)`, a European tuple
    if len(items) < 2 or not all(items):
        return None  # `(5)` is just a parenthesised number
    return ("seq", open_, close, tuple(_node(p, depth + 1) for p in items[:_MAX_ITEMS]))


def _bracket_char(tok: Token, opening: bool) -> str | None:
    kind, value = tok
    if kind == "op":
        if opening and value in ("(", "["):
            return value
        if not opening and value in (")", "]"):
            return value
        if value == ("\\{" if opening else "\\}"):
            return "{"
        if value == ("{" if opening else "}"):
            return "{"
    if kind == "cmd" and value == ("langle" if opening else "rangle"):
        return "(" if opening else ")"
    return None


def _outer_pair(tokens: list[Token]) -> bool:
    """Whether the first token's bracket closes at the last token (not ``(1)+(2)``)."""
    depth = 0
    for k, (kind, value) in enumerate(tokens):
        if (kind == "op" and value in _OPENERS) or (kind == "cmd" and value == "langle"):
            depth += 1
        elif (kind == "op" and value in _CLOSERS) or (kind == "cmd" and value == "rangle"):
            depth -= 1
            if depth == 0 and k != len(tokens) - 1:
                return False
    return depth == 0


def _choice(tokens: list[Token]) -> str | None:
    """A multiple-choice letter written as ``B``, ``(B)``, ``\\text{(B)}`` or ``\\textbf{B}``."""
    flat = "".join(v for k, v in tokens if k in ("op", "word", "text")).replace(" ", "")
    if len(tokens) > 3 or any(k not in ("op", "word", "text") for k, _ in tokens):
        return None
    m = _CHOICE.match(flat)
    return (m.group(1) or m.group(2)) if m else None


def _is_unit_token(tok: Token) -> bool:
    kind, value = tok
    if kind == "text":
        return any(c.isalpha() for c in value) or value == "$"
    return kind == "word" and len(value) >= 2 and value not in FUNCTIONS and value not in ("pi", "infty", "inf")


def _strip_unit(tokens: list[Token]) -> tuple[list[Token], str | None]:
    """Split trailing unit words (``\\text{ cm}^2``, ``dollars``, ``km/h``) off a numeric value."""
    j = len(tokens)
    while j > 0:
        tok = tokens[j - 1]
        if _is_unit_token(tok):
            j -= 1
            continue
        # `^2`, `^{3}`, `^{-1}` after a unit word
        if tok.kind == "num" and j >= 3 and tokens[j - 2] == Token("op", "^") and _is_unit_token(tokens[j - 3]):
            j -= 2
            continue
        if tok == Token("op", "}") and j >= 5:
            k = j - 2
            if tokens[k].kind == "num":
                k -= 1
                if tokens[k] == Token("op", "-"):
                    k -= 1
                if tokens[k] == Token("op", "{") and tokens[k - 1] == Token("op", "^") and k >= 2 and _is_unit_token(tokens[k - 2]):
                    j = k - 1
                    continue
        if (tok == Token("op", "/") or tok == Token("cmd", "cdot")) and j < len(tokens) and j >= 2 and _is_unit_token(tokens[j - 2]):
            j -= 1
            continue
        break
    if j == len(tokens):
        j = _compound_unit_start(tokens)
    if j == len(tokens) or j == 0:
        return tokens, None
    value, unit = tokens[:j], tokens[j:]
    if not _is_numeric(value):
        return tokens, None
    unit_text = "".join(v if k != "cmd" else "\\" + v for k, v in unit)
    unit_text = unit_text.replace(" ", "").replace("\\cdot", "*")
    return value, unit_text


def _compound_unit_start(tokens: list[Token]) -> int:
    """Where a trailing rate of known one-letter units starts (``1.2e8 m/s``, ``9.8 m/s^2``), or
    ``len(tokens)``. Alone a one-letter word may be a variable (``5 m``); in a rate it is a unit."""
    j = len(tokens)
    if j >= 2 and tokens[-1].kind == "num" and tokens[-2] == Token("op", "^"):
        j -= 2
    if j < 4 or tokens[j - 2] != Token("op", "/") or tokens[j - 1].kind != "word" or tokens[j - 3].kind != "word":
        return len(tokens)
    start = j - 3
    text = "".join(t.value for t in tokens[start:])
    return start if unit_scale(text) is not None else len(tokens)


def _is_numeric(tokens: list[Token]) -> bool:
    """A value without variables: digits, operators, \\frac, \\sqrt, \\pi …"""
    has_digit = False
    for kind, value in tokens:
        if kind == "num":
            has_digit = True
        elif kind == "word" and value not in ("pi", "e"):
            return False
        elif kind == "text":
            return False
        elif kind == "cmd" and value not in ("frac", "sqrt", "pi", "cdot", "times", "pm", "mp", "infty"):
            return False
    return has_digit


def _literal(tokens: list[Token]) -> tuple[int | None, bool, int]:
    """(last_digit, decimal, significant digits) for a plain number literal, possibly written
    ``a \\times 10^{k}``; (None, False, 0) for anything else."""
    if tokens and tokens[0].kind == "op" and tokens[0].value in "-+":
        tokens = tokens[1:]
    if not tokens or tokens[0].kind != "num":
        return None, False, 0
    mantissa, _, exp = tokens[0].value.lower().partition("e")
    exponent = int(exp) if exp else 0
    decimal = bool(exp) or "." in mantissa
    rest = tokens[1:]
    if rest:
        # a × 10^k
        if len(rest) < 4 or rest[0] not in (Token("cmd", "times"), Token("cmd", "cdot"), Token("op", "*")) \
                or rest[1] != Token("num", "10") or rest[2] != Token("op", "^"):
            return None, False, 0
        power = [t for t in rest[3:] if t.kind != "op" or t.value not in "{}"]
        sign = 1
        if power and power[0] == Token("op", "-"):
            sign, power = -1, power[1:]
        if len(power) != 1 or power[0].kind != "num" or not power[0].value.isdigit() or len(power[0].value) > 4:
            return None, False, 0
        exponent += sign * int(power[0].value)
        decimal = True
    decimals = len(mantissa.partition(".")[2])
    significant = len(mantissa.replace(".", "").lstrip("0"))
    return exponent - decimals, decimal, significant


def _scalar_node(tokens: list[Token]) -> tuple:
    value_tokens, unit = _strip_unit(tokens)
    if _is_text(value_tokens):
        return ("text", text_words(_tokens_text(tokens)))
    scalar = _scalar(value_tokens, unit)
    if scalar.tree is not None and contains(scalar.tree, "pm"):
        variants = expand_pm(scalar.tree)
        return ("list", tuple(("scalar", Scalar(text=scalar.text + f"#{k}", tree=v, unit=unit)) for k, v in enumerate(variants)))
    # `\frac{37}{4} m`: `m` may be a variable or metres; keep both readings.
    if unit is None and len(tokens) >= 2 and tokens[-1].kind == "word" and tokens[-1].value in SINGLE_LETTER_UNITS \
            and _is_numeric(tokens[:-1]):
        alt = _scalar(tokens[:-1], tokens[-1].value)
        scalar = dataclasses.replace(scalar, alt=alt)
    return ("scalar", scalar)


def _scalar(tokens: list[Token], unit: str | None) -> Scalar:
    text = _canon(_tokens_text(tokens))
    last_digit, decimal, significant = _literal(tokens)
    try:
        tree = parse_tokens(tokens)
        failure = None
    except TooLarge:
        tree, failure = None, "too_large"
    except ParseError:
        tree, failure = None, "syntax"
    # `a \times 10^{k}` (more than a sign and a literal) or an e-exponent
    scientific = last_digit is not None and (
        len(tokens) > 2 or any("e" in t.value.lower() for t in tokens if t.kind == "num"))
    return Scalar(text=text, tree=tree, failure=failure, unit=unit, last_digit=last_digit, decimal=decimal,
                  significant_digits=significant, scientific=scientific)


def _is_text(tokens: list[Token]) -> bool:
    """Prose or a named answer (``\\text{Monday}``, ``east``) rather than mathematics."""
    for kind, value in tokens:
        if kind == "text" and sum(c.isalpha() for c in value) >= 2:
            return True
        if kind == "word" and len(value) >= 4 and value not in FUNCTIONS and value not in ("infty",):
            return True
    return False
