"""Split normalised answer LaTeX into tokens for the structure and expression parsers.

Token kinds (``Token.kind``):

* ``num``   a decimal literal, optionally with an e-exponent (``4.5e33``); value is the literal text
* ``cmd``   a LaTeX command without its backslash (``frac``, ``pi``, ``cdot``)
* ``word``  a run of ASCII letters (``x``, ``cm``, ``sin``); the expression parser splits variables
* ``text``  the content of ``\\text{…}`` with inner commands and braces removed
* ``begin``/``end``  an environment name (``pmatrix``)
* ``op``    one character of punctuation, or ``\\{`` ``\\}`` ``\\\\`` (row separator) written as is

The scanner is a single left-to-right pass with anchored regexes; it never backtracks.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Token(NamedTuple):
    kind: str
    value: str


class TokenizeError(ValueError):
    """The text holds something the answer grammar has no token for."""


_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+(?![\d.]))?")
_COMMAND = re.compile(r"\\([A-Za-z]+)|\\(.)", re.DOTALL)
_WORD = re.compile(r"[A-Za-z]+")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_LEADING_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s+(?=[A-Za-z])")
_SPACE = re.compile(r"\s+")
_ENVIRONMENT = re.compile(r"\\(begin|end)\s*\{\s*([A-Za-z*]+)\s*\}")
_OPS = set("+-*/^_()[]{},=<>!|'&;:.?")
_TEXT_INNER_COMMAND = re.compile(r"\\[A-Za-z]+|\\(?=[^A-Za-z])|[{}]")
MAX_TOKENS = 600


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text``; raises ``TokenizeError`` on characters outside the grammar."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        if len(tokens) > MAX_TOKENS:
            raise TokenizeError("answer too long to parse")
        ch = text[i]
        if ch.isspace():
            i = _SPACE.match(text, i).end()
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            tokens.append(Token("num", m.group()))
            i = m.end()
            continue
        if ch == "\\":
            env = _ENVIRONMENT.match(text, i)
            if env:
                tokens.append(Token(env.group(1), env.group(2)))
                i = env.end()
                continue
            m = _COMMAND.match(text, i)
            if not m:
                raise TokenizeError("dangling backslash")
            if m.group(1):
                name = m.group(1)
                if name == "text":
                    content, i = _text_argument(text, m.end())
                    # `\mathbf{2340}` is a number in a font, not words.
                    if _PLAIN_NUMBER.fullmatch(content):
                        tokens.append(Token("num", content))
                        continue
                    # `\text{5 apples}`: a number followed by words is a value with a unit.
                    lead = _LEADING_NUMBER.match(content)
                    if lead:
                        tokens.append(Token("num", lead.group(1)))
                        content = content[lead.end():]
                    tokens.append(Token("text", content))
                    continue
                tokens.append(Token("cmd", name))
            else:
                sym = m.group(2)
                if sym in "{}":
                    tokens.append(Token("op", "\\" + sym))
                elif sym == "\\":
                    tokens.append(Token("op", "\\\\"))
                elif sym == "|":
                    tokens.append(Token("op", "|"))
                else:
                    raise TokenizeError(f"unknown escape \\{sym}")
            i = m.end()
            continue
        if ch.isalpha():
            if ch.isascii():
                m = _WORD.match(text, i)
                tokens.append(Token("word", m.group()))
                i = m.end()
            else:
                tokens.append(Token("word", ch))  # a non-ASCII letter (α, é) names itself
                i += 1
            continue
        if ch in _OPS:
            tokens.append(Token("op", ch))
            i += 1
            continue
        raise TokenizeError(f"unexpected character {ch!r}")
    return tokens


def _text_argument(text: str, start: int) -> tuple[str, int]:
    """Content of the ``{…}`` group after ``\\text``, flattened to plain text, and the end index."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        raise TokenizeError("\\text without braces")
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{" and text[j - 1] != "\\":
            depth += 1
        elif c == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                inner = _TEXT_INNER_COMMAND.sub("", text[i + 1:j])
                return " ".join(inner.split()), j + 1
    raise TokenizeError("unclosed \\text{")
