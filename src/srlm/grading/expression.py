"""A recursive-descent parser for the LaTeX arithmetic found in final answers.

It builds a small expression tree of tuples (never Python code, never ``eval``/``sympify``):

``("num", Fraction)``, ``("sym", name)``, ``("pi",)``, ``("e",)``, ``("i",)``, ``("inf",)``,
``("add", a, b)``, ``("neg", a)``, ``("mul", a, b)``, ``("div", a, b)``, ``("pow", a, b)``,
``("fn", name, a)``, ``("log", base, a)``, ``("fact", a)``, ``("abs", a)``, ``("floor", a)``,
``("ceil", a)``, ``("binom", a, b)``, ``("pm", a, b)`` (``a ± b``, expanded by the caller).

Conventions follow how answers are written, and are applied the same way to gold and response:
single letters are variables (``xy`` is ``x*y``), ``e`` and ``i`` are the constants, ``10^33`` means
``10^{33}``, an integer followed by ``\\frac`` of integers is a mixed number (``2\\frac12`` = 5/2), and
``f(x)`` with a one-token argument is an opaque function value, not ``f*x``.
Sizes are capped (tokens, nesting depth, literal exponents) so parsing is always fast.
"""

from __future__ import annotations

import re
from fractions import Fraction

from srlm.grading.tokens import Token, TokenizeError, tokenize

PI = ("pi",)
E = ("e",)
I_UNIT = ("i",)
INF = ("inf",)
ONE = ("num", Fraction(1))
HALF = ("num", Fraction(1, 2))

FUNCTIONS = frozenset(
    "sin cos tan sec csc cot arcsin arccos arctan arcsec arccsc arccot sinh cosh tanh coth "
    "arsinh arcosh artanh exp ln log sqrt sgn".split()
)
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan", "sec": "arcsec", "csc": "arccsc", "cot": "arccot"}
# Commands that name a quantity: Greek letters and a few physics symbols.
SYMBOL_COMMANDS = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi omicron "
    "rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma "
    "Upsilon Phi Psi Omega hbar ell odot oplus star AA nabla partial aleph triangle angle".split()
)
_TIMES = frozenset({"cdot", "times", "ast", "bullet"})
_MAX_DEPTH = 60
# Literal exponents beyond this are refused: `1e999999999` must never be built as a Fraction.
MAX_LITERAL_EXPONENT = 400
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\s*\{\s*(\d{1,12})\s*\}")


class ParseError(ValueError):
    """The answer is not in the grammar; a slower tier may still understand it."""


class TooLarge(ParseError):
    """The answer is in the grammar but too big to handle (a hostile or runaway answer)."""


def parse_expression(text: str) -> tuple:
    """Expression tree of normalised LaTeX ``text``; raises ``ParseError``."""
    try:
        tokens = tokenize(expand_repeating_decimals(text))
    except TokenizeError as e:
        raise ParseError(str(e)) from None
    return parse_tokens(tokens)


def parse_tokens(tokens: list[Token]) -> tuple:
    if not tokens:
        raise ParseError("empty expression")
    parser = _Parser(tokens)
    try:
        node = parser.expression()
    except RecursionError:
        raise TooLarge("nested too deeply") from None
    if parser.i != len(parser.tokens):
        raise ParseError(f"unexpected {parser.tokens[parser.i].value!r}")
    return node


def expand_repeating_decimals(text: str) -> str:
    """Replace ``0.\\overline{3}`` by the exact fraction it denotes."""
    return _REPEATING.sub(_repeating_decimal, text) if "overline" in text else text


def _repeating_decimal(m: re.Match) -> str:
    """``0.1\\overline{6}`` → ``(\\frac{1}{6})``: an exact value for a repeating decimal."""
    whole, fixed, period = m.group(1) or "0", m.group(2), m.group(3)
    base = Fraction(int(whole + fixed), 10 ** len(fixed))
    value = base + Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed))
    return f"(\\frac{{{value.numerator}}}{{{value.denominator}}})"


def number_value(literal: str) -> Fraction:
    """Exact value of a decimal literal such as ``4.5e33``; refuses huge exponents."""
    mantissa, _, exponent = literal.lower().partition("e")
    exp = int(exponent) if exponent else 0
    if abs(exp) > MAX_LITERAL_EXPONENT or len(mantissa) > 400:
        raise TooLarge("literal too large")
    if mantissa.endswith("."):
        mantissa = mantissa[:-1]
    value = Fraction(mantissa)
    return value * Fraction(10) ** exp if exp else value


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = list(tokens)
        self.i = 0
        self.depth = 0
        self.abs_depth = 0

    # -- token helpers ---------------------------------------------------------------------------

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        self.i += 1
        return tok

    def at_op(self, value: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok is not None and tok.kind == "op" and tok.value == value

    def at_cmd(self, names, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok is not None and tok.kind == "cmd" and tok.value in names

    def expect_op(self, value: str) -> None:
        if not self.at_op(value):
            raise ParseError(f"expected {value!r}")
        self.i += 1

    def push_back(self, token: Token) -> None:
        """Put the unread rest of a split token back in front of the stream."""
        self.tokens.insert(self.i, token)

    def enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise TooLarge("nested too deeply")

    # -- grammar ---------------------------------------------------------------------------------

    def expression(self) -> tuple:
        self.enter()
        node = self.term()
        while True:
            if self.at_op("+"):
                self.i += 1
                node = ("add", node, self.term())
            elif self.at_op("-"):
                self.i += 1
                node = ("add", node, ("neg", self.term()))
            elif self.at_cmd(("pm", "mp")):
                self.i += 1
                node = ("pm", node, self.term())
            else:
                break
        self.depth -= 1
        return node

    def term(self) -> tuple:
        node = self.unary()
        while True:
            tok = self.peek()
            if tok is None:
                break
            if (tok.kind == "op" and tok.value == "*") or (tok.kind == "cmd" and tok.value in _TIMES):
                self.i += 1
                node = ("mul", node, self.unary())
            elif tok.kind == "op" and tok.value == "/":
                self.i += 1
                node = ("div", node, self.unary())
            elif self.starts_factor(tok):
                mixed = self.mixed_number(node)
                node = mixed if mixed is not None else ("mul", node, self.power())
            else:
                break
        return node

    def mixed_number(self, node: tuple) -> tuple | None:
        """``2\\frac{1}{2}`` (an integer then a fraction of integers) is 2 + 1/2, as in MATH answers."""
        sign = 1
        whole = node
        if whole[0] == "neg":
            sign, whole = -1, whole[1]
        if whole[0] != "num" or whole[1].denominator != 1 or not self.at_cmd(("frac",)):
            return None
        start = self.i
        self.i += 1
        frac = ("div", self.argument(), self.argument())
        if frac[1][0] == "num" and frac[2][0] == "num" and frac[1][1].denominator == 1 and frac[2][1].denominator == 1 \
                and 0 < frac[1][1] < frac[2][1]:
            total = ("add", whole, frac)
            return ("neg", total) if sign < 0 else total
        self.i = start
        return None

    def starts_factor(self, tok: Token) -> bool:
        if tok.kind in ("num", "word"):
            return True
        if tok.kind == "cmd":
            return tok.value not in _TIMES and tok.value not in ("pm", "mp", "le", "ge", "ne", "cup", "cap",
                                                                 "rfloor", "rceil", "dots", "to", "in")
        if tok.kind == "text":
            return len(tok.value) == 1 and tok.value.isalpha()
        if tok.kind == "op":
            if tok.value == "|":
                return self.abs_depth == 0
            return tok.value in "([{"
        return False

    def unary(self) -> tuple:
        if self.at_op("-"):
            self.i += 1
            return ("neg", self.unary())
        if self.at_op("+"):
            self.i += 1
            return self.unary()
        if self.at_cmd(("pm", "mp")):
            self.i += 1
            return ("pm", ("num", Fraction(0)), self.unary())
        return self.power()

    def power(self) -> tuple:
        self.enter()
        node = self.postfix(self.primary())
        if self.at_op("^"):
            self.i += 1
            node = self.postfix(("pow", node, self.script()))
        self.depth -= 1
        return node

    def postfix(self, node: tuple) -> tuple:
        while True:
            if self.at_op("!"):
                self.i += 1
                node = ("fact", node)
            elif self.at_op("'") and node[0] == "sym":
                self.i += 1
                node = ("sym", node[1] + "'")
            else:
                return node

    def script(self) -> tuple:
        """The operand of ``^``: a braced group, or one signed token (``10^33`` keeps all digits)."""
        tok = self.peek()
        if tok is None:
            raise ParseError("missing exponent")
        if tok.kind == "op" and tok.value == "{":
            return self.group("{", "}")
        if tok.kind == "op" and tok.value in "-+":
            self.i += 1
            inner = self.script()
            return ("neg", inner) if tok.value == "-" else inner
        if tok.kind == "num":
            self.i += 1
            return ("num", number_value(tok.value))
        if tok.kind == "word":
            return self.single_letter()
        return self.primary()

    def argument(self) -> tuple:
        """One macro argument: ``{…}``, or a single digit/letter/command (``\\frac12``, ``\\sqrt2``)."""
        tok = self.peek()
        if tok is None:
            raise ParseError("missing argument")
        if tok.kind == "op" and tok.value == "{":
            return self.group("{", "}")
        if tok.kind == "num":
            self.i += 1
            if len(tok.value) > 1:
                self.push_back(Token("num", tok.value[1:]))
            return ("num", Fraction(int(tok.value[0]))) if tok.value[0].isdigit() else self.fail(tok)
        if tok.kind == "word":
            return self.single_letter()
        if tok.kind == "cmd":
            return self.primary()
        raise ParseError("bad argument")

    def fail(self, tok: Token):
        raise ParseError(f"unexpected {tok.value!r}")

    def group(self, open_: str, close: str) -> tuple:
        self.expect_op(open_)
        saved_abs, self.abs_depth = self.abs_depth, 0
        node = self.expression()
        self.abs_depth = saved_abs
        self.expect_op(close)
        return node

    def single_letter(self) -> tuple:
        """Take one letter of a word token (a symbol); the rest of the word stays in the stream."""
        tok = self.take()
        if len(tok.value) > 1:
            self.push_back(Token("word", tok.value[1:]))
        return self.letter(tok.value[0])

    def letter(self, ch: str) -> tuple:
        if self.at_op("_"):
            return ("sym", ch + "_" + self.subscript())
        if ch == "e":
            return E
        if ch == "i":
            return I_UNIT
        return ("sym", ch)

    def subscript(self) -> str:
        """The raw text of a subscript (part of a symbol's name, never evaluated)."""
        self.expect_op("_")
        tok = self.take()
        if tok.kind == "op" and tok.value == "{":
            depth, parts = 1, []
            while True:
                t = self.take()
                if t.kind == "op" and t.value == "{":
                    depth += 1
                elif t.kind == "op" and t.value == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(t.value)
            return "".join(parts)
        if tok.kind in ("num", "word") and len(tok.value) > 1:
            self.push_back(Token(tok.kind, tok.value[1:]))
            return tok.value[0]
        return tok.value

    def primary(self) -> tuple:
        tok = self.take()
        kind, value = tok
        if kind == "num":
            node = ("num", number_value(value))
            if self.at_op("_"):
                self.subscript()  # `2516_8`: the base names the notation; the digits are the answer
            return node
        if kind == "word":
            return self.word(tok)
        if kind == "cmd":
            return self.command(value)
        if kind == "text":
            if len(value) == 1 and value.isalpha():
                return self.letter(value)
            raise ParseError("text inside an expression")
        if kind == "op":
            if value == "(":
                self.i -= 1
                return self.group("(", ")")
            if value == "[":
                self.i -= 1
                return self.group("[", "]")
            if value == "{":
                self.i -= 1
                return self.group("{", "}")
            if value == "|" and self.abs_depth == 0:
                self.abs_depth += 1
                inner = self.expression()
                self.abs_depth -= 1
                self.expect_op("|")
                return ("abs", inner)
        raise ParseError(f"unexpected {value!r}")

    def word(self, tok: Token) -> tuple:
        value = tok.value
        if value in FUNCTIONS:
            return self.function(value)
        if value == "pi":
            return PI
        if value in ("infty", "inf"):
            return INF
        if len(value) > 1:
            # `xy` is x*y; the letters after the first are read on the next turn.
            self.push_back(Token("word", value[1:]))
            return self.letter(value[0])
        # `f(x)`, `I(0)`, `x(t)`: a function value with a one-token argument, kept opaque.
        if value not in "ei" and self.at_op("(") and self.at_op(")", 2):
            inner = self.peek(1)
            if inner.kind in ("num", "word") and len(inner.value) <= 3 and inner.value not in FUNCTIONS:
                self.i += 3
                return ("sym", f"{value}({inner.value})")
        return self.letter(value)

    def command(self, name: str) -> tuple:
        if name == "frac":
            return ("div", self.argument(), self.argument())
        if name == "sqrt":
            if self.at_op("["):
                index = self.group("[", "]")
                return ("pow", self.argument(), ("div", ONE, index))
            return ("pow", self.argument(), HALF)
        if name == "binom":
            return ("binom", self.argument(), self.argument())
        if name == "pi":
            return PI
        if name == "infty":
            return INF
        if name in ("lfloor", "lceil"):
            closer = "rfloor" if name == "lfloor" else "rceil"
            inner = self.expression()
            if not self.at_cmd((closer,)):
                raise ParseError(f"missing \\{closer}")
            self.i += 1
            return ("floor" if name == "lfloor" else "ceil", inner)
        if name in FUNCTIONS:
            return self.function(name)
        if name in ("dot", "ddot"):
            inner = self.argument()
            if inner[0] != "sym":
                raise ParseError("dot over a non-symbol")
            symbol = inner[1] + "_" + name
            return ("sym", symbol + "_" + self.subscript()) if self.at_op("_") else ("sym", symbol)
        if name in ("mathrm", "operatorname"):
            raise ParseError("unexpected font command")
        if name in SYMBOL_COMMANDS:
            if self.at_op("_"):
                return ("sym", "\\" + name + "_" + self.subscript())
            return ("sym", "\\" + name)
        raise ParseError(f"unknown command \\{name}")

    def function(self, name: str) -> tuple:
        if name == "sqrt":
            return ("pow", self.function_argument(), HALF)
        base = None
        power = None
        if name == "log" and self.at_op("_"):
            self.i += 1
            base = self.script()
        if self.at_op("^"):
            self.i += 1
            power = self.script()
            if power == ("neg", ONE) and name in _INVERSE:
                name, power = _INVERSE[name], None
        arg = self.function_argument()
        if name == "ln" or name == "log":
            node = ("log", base, arg)
        else:
            node = ("fn", name, arg)
        return ("pow", node, power) if power is not None else node

    def function_argument(self) -> tuple:
        """``\\sin(x)``, ``\\sin{x}``, or ``\\sin 2x`` (a product of factors, stopping at the next
        function, operator or parenthesis), as the argument is usually read."""
        if self.at_op("(") or self.at_op("{"):
            closer = ")" if self.at_op("(") else "}"
            return self.group(self.peek().value, closer)
        node = self.power()
        while True:
            tok = self.peek()
            if tok is None or not self.starts_factor(tok) or tok.kind == "op":
                break
            if (tok.kind == "cmd" and tok.value in FUNCTIONS) or (tok.kind == "word" and tok.value in FUNCTIONS):
                break
            node = ("mul", node, self.power())
        return node
