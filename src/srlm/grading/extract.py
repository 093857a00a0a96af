"""Find the final answer in a model response (or in a reference solution).

Rules, strongest first; the method name of the rule that fired is reported with the answer:

* ``unclosed_think``: the response opens ``<think>`` and never closes it, so it has no answer.
* ``answer_tag``: the content of the last ``<answer>…</answer>`` (the paper's format). The content is
  itself searched for a box, a ``####`` line or, in prose, an "answer is" phrase or a number, since
  models put ``\\boxed{}`` or sentences in it.
* ``boxed``: the content of the last *closed*, non-empty ``\\boxed{…}`` / ``\\fbox{…}`` (nested braces
  allowed; an empty ``\\boxed{}`` is the instruction echoed back). A later box after prose is a
  self-correction and wins; boxes separated only by connectors (``\\boxed{3} and \\boxed{5}``) are
  one answer spread over several boxes and are read together (``3, 5``).
* ``final_answer``: "the final answer is …" / "answer: …", when it comes after every box.
* ``gsm8k``: the text after the last ``#### `` marker, when it comes after every box.
* ``last_number``: the last number in the text (or the short ``$…$`` formula or LaTeX word holding
  it), only when the text commits to it: not a number pointed at ("the 15 books", "page 2") and not
  in a text that disclaims an answer ("no idea"). A weak guess, reported as such.

A closed ``<think>…</think>`` block is skipped: only the text after the last ``</think>`` counts.
Everything here is linear in the length of the response: no regex with nested quantifiers runs on the
raw response, so a 1 MB response is scanned in milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Method names, also shown by `srlm grade` and used by evaluation reports.
ANSWER_TAG = "answer_tag"
BOXED = "boxed"
FINAL_ANSWER = "final_answer"
GSM8K = "gsm8k"
LAST_NUMBER = "last_number"
UNCLOSED_THINK = "unclosed_think"
NONE = "none"

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Longer answers are almost certainly not an answer but a runaway generation; cut to keep later
# stages bounded.
MAX_ANSWER_CHARS = 2000

# "The final answer is $x$", "final answer: x", "the answer is x", "**Answer:** x".
# Only bounded, non-nested quantifiers: safe on any input.
_PHRASE = re.compile(
    r"(?:final\s{1,3}answer|\banswer)\**\s{0,3}(?:is\b|:|=)\**\s{0,3}:?\**",
    re.IGNORECASE,
)
_GSM8K_MARK = "####"
# A number as written in prose: optional sign, digits with optional thousands commas, decimals,
# or a simple fraction a/b. The pieces are bounded by what follows, so matching stays linear.
# A digit glued to letters before it ("AZYUK2A", "H2O", "step2") is part of a word, not a number.
# Thousands may be grouped with commas or with single spaces ("1 000 people").
_NUMBER = re.compile(r"(?<![A-Za-z_])(?:-?[1-9]\d{0,2}(?: \d{3})+(?![\d.,])|-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+)")
_WORD = re.compile(r"[A-Za-z]{2,}")
_BRACE = re.compile(r"[{}]")
_MATH_START = re.compile(r"[-+$\\(\[\d.]")
_INLINE_MATH = re.compile(r"\$([^$]{1,200})\$|\\\((.{1,200}?)\\\)")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_LATEX_WORDS = re.compile(r"\\[A-Za-z]+|\\text\{[^{}]*\}")
_BARE_BOX_TOKEN = re.compile(r"[^\s$,;]+")
# An answer spread over more boxes than this is a runaway repetition, not one answer: its last box counts.
_MAX_BOXES_READ_TOGETHER = 16
_TRAILING_PUNCT = re.compile(r"[.,;:!?]+$")
# A number right after one of these words points at something ("page 2", "remove the 15 books"),
# it does not state a result.
_REFERENCE_BEFORE = re.compile(
    r"\b(?:the|these|those|page|pages|step|steps|line|lines|chapter|section|part|case|problem|question|"
    r"exercise|equation|figure|table|note|notes|item|option|rule)\s{1,3}$", re.IGNORECASE)
# A value ruled out rather than stated: "not 6", "instead of 6", "6 is wrong".
_NEGATED_BEFORE = re.compile(
    r"\b(?:not|never|instead of|rather than|except|excluding|isn'?t|wasn'?t)\s{0,3}\$?\s{0,2}$", re.IGNORECASE)
_WRONG_AFTER = re.compile(r"\$?\s{0,3}(?:is|was)\s{1,3}(?:wrong|incorrect|not\b)", re.IGNORECASE)
# Words that disclaim an answer.
_HEDGE = re.compile(r"\b(?:no idea|not sure|don'?t know|do not know|cannot (?:be )?determine|can'?t determine|"
                    r"unable to|cannot solve|can'?t solve)\b", re.IGNORECASE)
# A sentence that asks or sets the problem rather than answers it.
_QUESTION_START = re.compile(r"(?:\**\s*)(?:given|suppose|assume|find|compute|determine|calculate|evaluate|what|"
                             r"how many|how much|let)\b", re.IGNORECASE)
# Words that restate the task ("we need to simplify …"), and what shows a result after them ("= 7").
_TASK_WORD = re.compile(r"\b(?:simplify|factor|expand|solve|compute|calculate|evaluate|find|determine|given|"
                        r"asked|asks|need to|want to|have to)\b", re.IGNORECASE)
_RESULT_WORD = re.compile(r"=|\\approx|\b(?:is|are|was|get|gives|equals|obtain)\b", re.IGNORECASE)
_BARE_SYMBOL = re.compile(r"\\?[A-Za-z]+(?:_\{?\w{1,3}\}?)?")
# What may separate the boxes of one answer: math delimiters, commas, "and"/"or", a label "y =".
_BOX_CONNECTOR = re.compile(
    r"(?:\s|\$|\\[()\[\]]|[,;&]|\\q?quad|\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b|\\\\"
    r"|[A-Za-z](?:_\{?[A-Za-z0-9]{1,3}\}?)?\s*=)*")
# Markdown headings ("#### Step 2") also start with ####; a GSM8K answer starts like a number.
_GSM8K_ANSWER_START = re.compile(r"\s*[-+$\\\d.]")


@dataclass(frozen=True)
class Extraction:
    """The extracted answer text (``None`` when there is none) and the rule that found it."""

    answer: str | None
    method: str


def sanitize(text: object) -> str:
    """Return ``text`` as a str that can always be encoded (lone surrogates become U+FFFD)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from broken byte decoding) become U+FFFD, like any invalid text.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def strip_think(text: str) -> str | None:
    """Drop a closed ``<think>…</think>`` block; ``None`` if a ``<think>`` is never closed."""
    close = text.rfind("</think>")
    if text.rfind("<think>") > close:
        return None
    if close >= 0:
        return text[close + len("</think>"):]
    return text


def matching_braces(text: str, start: int = 0) -> dict[int, int]:
    """Map the index of every ``{`` in ``text[start:]`` that is closed to the index of its ``}``.

    One pass with a stack, so finding every box is linear even in 100 KB of nested braces.
    Escaped braces (``\\{``) are ignored.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text, start):
        i = m.start()
        if i and text[i - 1] == "\\":
            continue
        if m.group() == "{":
            stack.append(i)
        elif stack:
            pairs[stack.pop()] = i
    return pairs


def boxes(text: str) -> list[tuple[str, int, int]]:
    """(content, start, end) of every closed, non-empty ``\\boxed{…}``/``\\fbox{…}``, in order.

    ``\\boxed 5`` (no braces) holds the next token, unless that token is a plain word (prose that
    mentions the command: "I put it in \\boxed to finish"). An empty box is the instruction's
    ``\\boxed{}`` echoed back, not an answer. A box inside another box is not listed again.
    """
    starts: list[tuple[int, int]] = []  # (position after the command name, command start)
    for cmd in _BOX_COMMANDS:
        i = text.find(cmd)
        while i != -1:
            starts.append((i + len(cmd), i))
            i = text.find(cmd, i + 1)
    if not starts:
        return []
    starts.sort()
    pairs: dict[int, int] | None = None
    found: list[tuple[str, int, int]] = []
    for after, begin in starts:
        if found and begin < found[-1][2]:
            continue
        j = after
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            if pairs is None:
                pairs = matching_braces(text, starts[0][0])
            end = pairs.get(j)
            if end is not None and text[j + 1:end].strip():
                found.append((text[j + 1:end], begin, end + 1))
            continue
        if j > after and j < len(text):
            m = _BARE_BOX_TOKEN.match(text, j)
            if m and not _WORD.fullmatch(m.group(0).rstrip(".")):
                found.append((m.group(0), begin, m.end()))
    return found


def last_boxed(text: str) -> tuple[str, int] | None:
    """Content and end index of the last closed, non-empty box (see ``boxes``), or ``None``.

    An unclosed last box (a truncated response) falls back to the previous closed one.
    """
    found = boxes(text)
    return (found[-1][0], found[-1][2]) if found else None


def boxed_answer(text: str) -> tuple[str, int] | None:
    """The final boxed answer and its end: the last box, or the run of boxes that ends the
    response when only connectors separate them (``\\boxed{3} and \\boxed{5}`` → ``3, 5``, the
    way R1-style traces box each part of an answer). A box after prose is a self-correction and
    stands alone."""
    found = boxes(text)
    if not found:
        return None
    k = len(found) - 1
    while k > 0 and found[k][1] - found[k - 1][2] <= 40 \
            and _BOX_CONNECTOR.fullmatch(text, found[k - 1][2], found[k][1]):
        k -= 1
    if k == len(found) - 1 or len(found) - k > _MAX_BOXES_READ_TOGETHER:
        return found[-1][0], found[-1][2]
    return ", ".join(c.strip() for c, _, _ in found[k:]), found[-1][2]


def _after_phrase(text: str) -> tuple[str, int, bool] | None:
    """The answer after the last "answer is" phrase, the phrase's position, and whether the phrase
    is a strong one ("final answer") stating a short answer."""
    last = None
    for m in _PHRASE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():last.end() + MAX_ANSWER_CHARS].lstrip()
    answer = _first_math_or_sentence(rest)
    if not answer:
        return None
    # Strong enough to override an earlier box: "final answer: …" stating a short answer, or "the answer
    # is" followed at once by a plain value ("…\\boxed{450}. Wait, … so the answer is 540."), not by a
    # question ("is it a coincidence that the answer is 24?") or a check ("our answer: $10 \\cdot 901 = …$").
    mathy = _MATH_START.match(rest) is not None
    final = last.group().lower().startswith("final")
    plain_value = (mathy and "is" in last.group().lower() and "=" not in answer and "\\equiv" not in answer
                   and "?" not in answer and not rest[len(answer):len(answer) + 3].lstrip("$ ").startswith("?")
                   and not _HEDGE.search(answer))
    strong = plain_value or (final and (mathy or len(_WORD.findall(answer)) <= 1))
    if _looks_like_prose(answer, min_words=2):
        answer = _value_in_sentence(answer) or answer
    return answer, last.start(), strong


def _value_in_sentence(sentence: str) -> str | None:
    """The value a sentence states: its first ``$…$`` formula that is not a bare variable name
    ("The largest $n$ is $34$" gives ``34``), else its first number ("the answer is therefore 18
    because …" gives ``18``), else its only formula."""
    formulas = [m for m in _INLINE_MATH.finditer(sentence) if not _rejected(sentence, m.start(), m.end())]
    for m in formulas:
        formula = (m.group(1) or m.group(2)).strip()
        if not _BARE_SYMBOL.fullmatch(formula):
            return formula
    for number in _NUMBER.finditer(sentence):
        if not _rejected(sentence, number.start(), number.end()):
            return number.group()
    return (formulas[0].group(1) or formulas[0].group(2)).strip() if formulas else None


def _span_of(text: str, part: str) -> tuple[int, int]:
    start = text.find(part)
    return start, start + len(part)


def _rejected(text: str, start: int, end: int) -> bool:
    """The value at ``text[start:end]`` is named only to be ruled out: "not 6", "6 is wrong"."""
    return _NEGATED_BEFORE.search(text, max(0, start - 20), start) is not None \
        or _WRONG_AFTER.match(text, end) is not None


def _first_math_or_sentence(rest: str) -> str:
    """The ``$…$``/``\\(…\\)``/``\\[…\\]`` span that starts ``rest``, or its first sentence."""
    rest = rest.lstrip("*").lstrip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end > 0:
                return rest[len(open_):end].strip()
    line = rest.split("\n", 1)[0]
    # A sentence ends at a period followed by a space (never inside a decimal like 4.5).
    stop = _SENTENCE_END.search(line)
    if stop:
        line = line[:stop.start()]
    return line.replace("**", "").strip().rstrip(".").strip()


def _after_gsm8k_mark(text: str) -> tuple[str, int] | None:
    i = text.rfind(_GSM8K_MARK)
    if i < 0 or not _GSM8K_ANSWER_START.match(text, i + len(_GSM8K_MARK)):
        return None
    answer = text[i + len(_GSM8K_MARK):].lstrip().split("\n", 1)[0].strip()
    return (answer, i) if answer else None


def last_number(text: str, committed: bool = False) -> str | None:
    """The last number in ``text``; if it sits inside a short ``$…$`` formula, that formula
    (so "the probability is $\\frac{1}{2}$" gives ``\\frac{1}{2}``, not ``2``), and if it sits in
    LaTeX outside ``$`` (``so \\frac{10}{9}``), the LaTeX word holding it.

    ``committed``: only a number the text states as a result; ``None`` when the last number is a
    reference or a restatement ("page 2 of my notes", "to remove the 15 books") or the text
    disclaims any answer ("I have no idea").
    """
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    if last is None:
        return None
    if committed and not _is_committed(text, last.start(), last.end()):
        return None
    open_ = text.rfind("$", max(0, last.start() - 200), last.start())
    close = text.find("$", last.end(), last.end() + 200)
    if open_ >= 0 and close >= 0 and text.count("$", 0, open_) % 2 == 0:
        formula = text[open_ + 1:close].strip()
        if formula and "$" not in formula:
            return formula
    for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
        open_ = text.rfind(opener, max(0, last.start() - 200), last.start())
        close = text.find(closer, last.end(), last.end() + 200)
        if open_ >= 0 and close >= 0 and closer not in text[open_:last.start()]:
            formula = text[open_ + 2:close].strip()
            if formula:
                return formula
    word = _latex_word(text, last.start(), last.end())
    if word is not None:
        return word
    return last.group(0).rstrip(",")


def _is_committed(text: str, start: int, end: int) -> bool:
    """Whether the number at ``text[start:end]`` is stated as a result: not disclaimed in its sentence
    or after it ("I have no idea, page 2"), not pointed at ("the 15 books", "page 2"), not ruled out
    ("not 6"), not in a restated question ("How many of the 15 books…?", "Find $x$ if $xy = 15$.")."""
    sentence_start = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start)) + 1
    if _HEDGE.search(text, sentence_start):
        return False
    if _REFERENCE_BEFORE.search(text, max(0, start - 30), start) or _rejected(text, start, end):
        return False
    after = _SENTENCE_END.search(text, end)
    sentence_end = after.start() if after else len(text)
    newline = text.find("\n", end, sentence_end)
    sentence = text[sentence_start:newline if newline >= 0 else sentence_end].strip()
    if sentence.endswith("?") or _QUESTION_START.match(sentence):
        return False
    # "We need to simplify $\frac{x^2-1}{x-1}$": the task restated, with no result after it.
    task = None
    for task in _TASK_WORD.finditer(text, sentence_start, start):
        pass
    return task is None or _RESULT_WORD.search(text, task.end(), start) is not None


def _latex_word(text: str, start: int, end: int) -> str | None:
    """The whitespace-delimited LaTeX (``\\frac{10}{9}``, ``\\(2^{10}\\)``) around ``text[start:end]``,
    when the number is inside a command's braces; ``None`` for a plain number."""
    left = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start)) + 1
    right_space = [i for i in (text.find(" ", end), text.find("\n", end)) if i >= 0]
    right = min(right_space) if right_space else len(text)
    word = text[left:right]
    if "\\" not in word or "{" not in word or right - left > 200:
        return None
    word = _TRAILING_PUNCT.sub("", word)
    for open_, close in (("\\(", "\\)"), ("\\[", "\\]")):
        if word.startswith(open_) and word.endswith(close):
            word = word[len(open_):-len(close)]
    return word if word.count("{") == word.count("}") else None


def _from_span(text: str) -> Extraction:
    """Apply box, phrase, GSM8K marker and last-number rules to ``text``."""
    box = boxed_answer(text)
    phrase = _after_phrase(text)
    mark = _after_gsm8k_mark(text)
    box_end = box[1] if box else -1
    # After the last box, only a "final answer is …" or a `#### n` line restates the answer;
    # "the answer is correct" after a box is commentary.
    later = []
    if phrase and phrase[1] >= box_end and (box is None or phrase[2]):
        later.append((phrase[0], phrase[1], FINAL_ANSWER))
    if mark and mark[1] >= box_end:
        later.append((mark[0], mark[1], GSM8K))
    if later:
        answer, _, method = max(later, key=lambda c: c[1])
        inner = last_boxed(answer)
        return Extraction(_clip(inner[0] if inner else answer), method)
    if box:
        return Extraction(_clip(box[0]), BOXED)
    number = last_number(text, committed=True)
    if number is not None:
        return Extraction(number, LAST_NUMBER)
    return Extraction(None, NONE)


def _answer_tag_content(text: str) -> str | None:
    """Content of the last ``<answer>`` block; an unclosed last block runs to the end."""
    open_ = text.rfind("<answer>")
    if open_ < 0:
        return None
    start = open_ + len("<answer>")
    close = text.find("</answer>", start)
    return text[start:] if close < 0 else text[start:close]


def _looks_like_prose(text: str, min_words: int = 3) -> bool:
    """Several plain words outside LaTeX commands: a sentence rather than a bare answer."""
    plain = _LATEX_WORDS.sub(" ", text[:MAX_ANSWER_CHARS])
    return len(_WORD.findall(plain)) >= min_words


def _clip(answer: str) -> str:
    return answer.strip()[:MAX_ANSWER_CHARS]


def extract_answer(response: str) -> Extraction:
    """The final answer of ``response`` and the name of the rule that found it (see module doc)."""
    text = sanitize(response)
    body = strip_think(text)
    if body is None:
        return Extraction(None, UNCLOSED_THINK)
    content = _answer_tag_content(body)
    if content is not None:
        inner = content.strip()
        if not inner:
            return Extraction(None, ANSWER_TAG)
        box = boxed_answer(inner)
        if box:
            return Extraction(_clip(box[0]), ANSWER_TAG)
        mark = _after_gsm8k_mark(inner)
        if mark:
            return Extraction(_clip(mark[0]), ANSWER_TAG)
        if _looks_like_prose(inner):
            if _MATH_START.match(inner):
                # "\\frac{1}{2} of the pie. It is …": the value and its words up to the first stop;
                # trailing words are dropped later as units or labels.
                return Extraction(_clip(_first_math_or_sentence(inner)), ANSWER_TAG)
            found = _from_span(inner)
            if found.answer is not None:
                return Extraction(found.answer, ANSWER_TAG)
            if not _HEDGE.search(inner) and "\n" not in inner.strip():
                # The tags hold the answer, so a one-sentence answer whose last number only points back
                # ("4 books, to reach the 15 books") states its first value.
                value = _value_in_sentence(inner)
                if value is not None and _is_committed(inner, *_span_of(inner, value)):
                    return Extraction(_clip(value), ANSWER_TAG)
        return Extraction(_clip(inner), ANSWER_TAG)
    return _from_span(body)
