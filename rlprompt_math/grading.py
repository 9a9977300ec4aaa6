"""Answer extraction, safe parsing, symbolic equivalence and partial credit.

Model output is untrusted text. Nothing here calls `eval`, `exec`, `sympify` or `parse_expr`: a
small recursive-descent parser accepts a whitelist of tokens (numbers, `+ - * / ^`, brackets,
`sqrt`, `pi`, single-letter variables) and builds sympy objects itself. Before any power is
computed its size is estimated, so `9^{9^{9^{9}}}` is refused in microseconds instead of hanging in
C big-integer code, where no timeout could stop it.

Why not latex2sympy2_extended / math-verify: latex2sympy2's grammar rejects `0.\\overline{63}`
and it evaluates powers with no size guard; Math-Verify misses thin-space thousands, scientific
notation, a Unicode minus, plain-text pi and two boxes side by side, and its timeout does not stop
big-integer work (see the tests for each case).

Equality rules (`answers_equal`):
  * integers, fractions and terminating decimals compare **exactly** (0.5 == 1/2; 123457 != 123456);
  * only when a side is written as a decimal and the other side has no such finite decimal value
    (1/3, pi, sqrt 2) is a tolerance used: the exact side, rounded to the decimal's number of
    places, must equal the decimal, and the relative error must be at most 1% (3.14 == pi,
    0.33 == 1/3, 1.41 == sqrt 2, but 0.3 != 1/3, 1.4 != sqrt 2 and 3.1 != pi);
  * a percentage `p%` equals `p` or `p/100`;
  * `x = 3` compares as `3`; tuples keep order, sets do not; open and closed intervals differ;
  * expressions with variables are equal when their difference is zero at several exact rational
    points (bounded work, unlike `simplify`).
"""

from __future__ import annotations

import math
import re
import signal
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from fractions import Fraction

import sympy

MAX_TEXT_CHARS = 50_000      # completions are scanned from their last 50k characters
MAX_ANSWER_CHARS = 400       # a final answer longer than this is not parsed
MAX_DEPTH = 40               # bracket / operator nesting
MAX_RESULT_BITS = 20_000     # a power whose result needs more bits than this is refused
MAX_SYMBOLIC_EXPONENT = 32   # x^n with variables: larger n is refused (expansion blows up)
TIME_LIMIT_S = 1.0           # wall-clock backstop for a grading call (main thread only)
RELATIVE_TOLERANCE = 1e-2    # for an inexact decimal; see the module docstring


_STRICT: ContextVar[bool] = ContextVar("strict", default=False)


class ParseError(ValueError):
    """The answer text is not a math answer this parser accepts."""


class TooLarge(ParseError):
    """Evaluating the answer would exceed the size limits."""


class GradingTimeout(Exception):
    pass


# =============================================================================================
# Extraction
# =============================================================================================

_NUMBER = r"[-−]?\$?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?%?|[-−]?\.\d+%?"
_ANSWER_PHRASES = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is|answer\s*:|answer\s+is)\s*[:=]?\s*",
    re.IGNORECASE)


_FINAL_PHRASE = re.compile(r"final\s+answer\s*(?:is|:)\s*[:=]?\s*", re.IGNORECASE)


def _last_boxed_groups(text: str) -> list[list[str]]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}`, brace-matched, grouped when side by side."""
    groups: list[list[str]] = []
    last_end = -10**9
    pattern = re.compile(r"\\(?:boxed|fbox)\s*\{")
    match = pattern.search(text)
    while match:
        start = match.end()
        depth, i = 1, start
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth:  # unbalanced: ignore this box
            match = pattern.search(text, start)
            continue
        content = text[start:i - 1]
        while re.fullmatch(r"\s*\\(?:boxed|fbox)\s*\{.*\}\s*", content, re.S):  # \boxed{\boxed{3}}
            content = content.strip()
            content = content[content.index("{") + 1:-1]
        between = text[last_end:match.start()] if last_end >= 0 else "x" * 100
        if groups and _side_by_side(between):
            groups[-1].append(content)
        else:
            groups.append([content])
        last_end = i
        match = pattern.search(text, i)
    return groups


_BOX_SEPARATOR_NOISE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}|\\q?quad|\\[,;: ]|\\[()\[\]]|\$")


def _side_by_side(between: str) -> bool:
    """Whether two boxes belong to one answer: between them only punctuation, spacing, `$`, a rule
    of one repeated symbol ("++++++"), and at most "or"/"and" after up to three short words
    ("\\boxed{1} papers and \\boxed{2}", "\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}").
    A single operator ("\\boxed{2} + \\boxed{3}") is not a separator. A sentence, a line break between
    words, or words without "and"/"or" ("\\boxed{5} no, wait: \\boxed{6}") keep them apart."""
    if len(between) > 80:
        return False
    between = re.sub(r"(?<!\\)\\$", "", between)  # the first backslash of a doubly escaped \\boxed
    # a rule of three or more of one symbol ("++++++", "---", "***") is a visual separator, not an operator
    between = re.sub(r"([+\-=*~_#])\1{2,}", " ", between)
    plain = _BOX_SEPARATOR_NOISE.sub(lambda m: f" {m.group(1)} " if m.group(1) else " ", between)
    return bool(re.fullmatch(r"[\s,;]*(?:(?:[A-Za-z()]{1,12}\s+){0,3}(?:or|and)\b)?[\s,;]*"
                             rf"(?:{_NAME}\s*=\s*)?", plain))  # "... and \( y_2 = \boxed{...}": a labelled part


def _unclosed_box_after(text: str, position: int) -> bool:
    """Whether a `\\boxed{` at or after `position` never closes: malformed LaTeX, no final answer."""
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text[position:]):
        depth, i = 1, position + match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            return True
    return False


_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$([^$]+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)


def _last_math_span(text: str) -> str | None:
    """The content of the last `$...$`, `$$...$$`, `\\(...\\)` or `\\[...\\]` when nothing after it
    holds a digit (the span is the text's last mathematical statement). Inline spans (`$`, `\\(`)
    may not cross a line break."""
    spans = [m for m in _MATH_SPAN.finditer(text)]
    for span in reversed(spans):
        content = next(g for g in span.groups() if g is not None)
        inline = span.group(2) is not None or span.group(3) is not None
        if inline and "\n" in content:
            continue
        if re.search(r"\d", text[span.end():]):
            return None
        content = content.strip().rstrip(".,;").strip()
        joined = [content]
        index = spans.index(span)
        # "$1$ and $2$ and $3$", "$21,16$ or $11$": spans joined only by a comma, "and" or "or" are
        # one answer, a list (a list never equals a single value, so hedging gains nothing).
        while index > 0 and re.fullmatch(r"\s*(?:,\s*)?(?:(?:and|or)\s*)?", text[spans[index - 1].end():spans[index].start()]) \
                and text[spans[index - 1].end():spans[index].start()].strip() and len(joined) < 20:
            previous = next(g for g in spans[index - 1].groups() if g is not None).strip().rstrip(".,;").strip()
            if not previous or "\n" in previous:
                break
            joined.insert(0, previous)
            index -= 1
        return ", ".join(joined) if content else None
    return None


# LaTeX a bare answer line may use: \frac in its \dfrac/\tfrac forms, \left( \right), \cdot,
# \times and the spacing commands (a line "\dfrac{1}{3}" is 1/3, not its last digit 3).
_MATH_LINE = re.compile(r"[\d\s.+\-*/^()=%,]*(?:(?:\\?pi|π|√|\\?sqrt|\\[dt]?frac|\\overline|\\ldots|\\left|"
                        r"\\right|\\cdot|\\times|\\[,;! ]|[a-z])"
                        r"[\d\s.+\-*/^(){}=%,\\]*)*")
# A fraction before a plain number ("is 5/12." is 5/12, not 12), and a multiple of pi or a root
# keeps its symbol ("is 4π." is 4π, not 4).
# A number is not read out of an alphanumeric word ("AZYUK2A", "B12", "x_2", "3x2"): no letter,
# digit or underscore right before it, and no letters-then-digit right after it ("12cm" is 12).
_IN_WORD_BEFORE = r"(?<![A-Za-z_\d])"
_IN_WORD_AFTER = r"(?![A-Za-z]*\d)"
_WORD_NUMBER = _IN_WORD_BEFORE + r"(?:" + _NUMBER + r"|\d+\s*/\s*\d+)" + _IN_WORD_AFTER
_FALLBACK_NUMBER = re.compile(_IN_WORD_BEFORE + r"(?:"
                              r"\d+\s+\d+/\d+(?![\d.])|\d*\.\\overline\{\d+\}|\d*\.\d+(?:\.\.\.|\\ldots|…)"
                              r"|\\[dt]?frac\{\d+\}\{\d+\}|[-−]?\d+/\d+(?!\d|\.\d)|√\d+|"
                              r"(?:" + _NUMBER + r")(?:\s*(?:π|\\pi\b|√\d+))?)" + _IN_WORD_AFTER)


def _join_thousands(text: str) -> str:
    """1\\,234 and 1 234 (thin or plain space between digit groups) -> 1234."""
    return re.sub(r"(?<![\d.,])\d{1,3}(?:(?:\\,|\u2009|\u202f| )\d{3})+(?![\d/.])",
                  lambda m: re.sub(r"\\,|\u2009|\u202f| ", "", m.group(0)), text)


def _clean_phrase(phrase: str) -> str | None:
    """The math in an answer phrase such as '$1,234 dollars.' or 'x = \\frac{1}{2}, so ...'."""
    phrase = _join_thousands(phrase.strip())
    phrase = re.split(r"\n|(?<=[^\d\s])\.\s|\.$|\.\s+[A-Z]|;|\bso\b|\bbecause\b|\bsince\b", phrase)[0]
    phrase = phrase.strip().strip("$").strip()
    phrase = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", phrase).strip()
    phrase = phrase.rstrip(".").strip()
    if not phrase:
        return None
    if re.search(r"\\[a-zA-Z]|[{}^]|\bsqrt\b|[π√]|\bpi\b|[=\[\]]|^\(", phrase):
        return phrase
    numbers = re.findall(_WORD_NUMBER, phrase)
    numbers = [n for n in (re.sub(r"\s+", "", n).rstrip(",") for n in numbers) if n]
    if not numbers:
        return phrase if re.fullmatch(r"[a-zA-Z0-9+\-*/() .]+", phrase) else None
    number = r"[-−]?\$?\d[\d,.]*%?"
    if re.match(rf"\s*{number}(?:(?:\s*,\s+|\s*,(?!\d{{3}}\b)|\s*\bor\b\s*|\s*\band\b\s*){number})+\s*$", phrase):
        return ", ".join(dict.fromkeys(numbers))  # answers side by side ("5 or 6"): a list, not either
    mixed = re.match(r"\s*(\d+\s+\d+\s*/\s*\d+)(?![\d.])", phrase)
    if mixed:
        return mixed.group(1)  # mixed number "1 1/2 cups"
    expr = re.fullmatch(r"[\d\s.+\-*/×÷·()^−%]+", phrase)
    return phrase if expr and len(numbers) > 1 else numbers[0]


def extract_answer(text: str | None) -> str | None:
    """The final answer stated in free model text, or None.

    In order: the last `\\boxed{}` (boxes side by side become one list), the last `#### N`, the last
    "The answer is ...", "Final answer: ...", "Answer: ...", then the last number in the text.
    """
    if not text or not isinstance(text, str):
        return None
    text = text[-MAX_TEXT_CHARS:].replace("−", "-")
    groups = _last_boxed_groups(text)
    starts = [m.start() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if starts and _unclosed_box_after(text, starts[-1]):
        return None  # the last \boxed{ never closes: malformed LaTeX, no final answer
    if groups:
        # "... \boxed{255} ... Final Answer: The final answer is $10,455$.": a final-answer statement
        # after the last box supersedes the boxes (they were intermediate results).
        for match in reversed(list(_FINAL_PHRASE.finditer(text, starts[-1]))):
            stated = text[match.end():match.end() + 300]
            if any(c.strip() and c.strip() in stated for c in groups[-1]):
                break  # the statement restates the box
            answer = _clean_phrase(stated)
            if answer and re.search(r"\d|\\", answer):
                return answer
        contents = list(dict.fromkeys(c.strip() for c in groups[-1]))
        return ", ".join(contents) if len(contents) > 1 else contents[0] or None
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return _clean_phrase(hashes[-1])
    phrases = list(_ANSWER_PHRASES.finditer(text))
    for match in reversed(phrases):
        answer = _clean_phrase(text[match.end():match.end() + 300])
        if answer:
            return answer
    span = _last_math_span(text)
    if span is not None:
        return span
    lines = [re.sub(r"(?<!\.)\.$", "", line.strip()).strip("$ ")
             for line in text.strip().splitlines() if line.strip()]
    # a doubly escaped command (`\\dfrac`, as in a raw string) is read as the command, as the parser does
    last = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", lines[-1]) if lines else ""
    if (lines and len(lines[-1]) <= 80 and _MATH_LINE.fullmatch(last) and re.search(r"\d|pi|π", last)
            and not re.search(r"(?<![\\a-z])(?!(?:pi|sqrt)\b)[a-z]{2,}\b", last)):  # prose is not math
        return lines[-1]  # the last line is itself an answer: "pi/2", "sqrt(8)", "36 + 32 = 68"
    numbers = _FALLBACK_NUMBER.findall(_join_thousands(text))
    if numbers:
        return numbers[-1].rstrip(".,")
    return None


_EQUATION_LINE = re.compile(r"[^\n=]*=\s*\$?\s*(?:" + _NUMBER + r"|\d+\s*/\s*\d+)\s*\$?\s*\.?\s*")
_PHRASE_DONE = re.compile(r"\s*\$?\s*(?:" + _NUMBER + r"|\d+\s*/\s*\d+)")


def answer_is_complete(text: str) -> bool:
    """Whether `text`, ending at a line break, has already stated its final answer.

    Decoding uses this to stop a row at the first newline after an answer (`\\boxed{68}`, `#### 68`,
    "The answer is 68." anywhere; `36 + 32 = 68` as the first line), so a model that goes on to
    ramble costs no more forward passes. Conservative: a line that only sets up the work ("First,
    add 7 and 13.") or an equation after the first line (an intermediate step) does not stop it.
    """
    if not text or not text.rstrip(" \t").endswith("\n"):
        return False
    if _last_boxed_groups(text[-MAX_TEXT_CHARS:]) or re.search(r"####\s*\S", text):
        return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    last = lines[-1]
    phrase = None
    for phrase in _ANSWER_PHRASES.finditer(last):
        pass
    if phrase is not None and _PHRASE_DONE.match(last[phrase.end():]):
        return True
    # An equation counts only as the first line (a direct answer): in worked solutions the first
    # lines are intermediate steps.
    return len(lines) == 1 and bool(_EQUATION_LINE.fullmatch(last))


# =============================================================================================
# Normalisation: LaTeX and plain text to the parser's small language
# =============================================================================================

_FUNCTIONS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec, "csc": sympy.csc,
              "cot": sympy.cot, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
              "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log,
              "exp": sympy.exp}
_FUNCTION_NAMES = "|".join(sorted(_FUNCTIONS, key=len, reverse=True))

_LATEX_REPLACEMENTS = [
    (r"\{,\}|,\\!\s*", ","),                       # 14{,}916 and 11,\! 111: thousands separators
    (r"\\left|\\right|\\!|\\displaystyle|\\mathbf|\\bigl|\\bigr|\\Bigl|\\Bigr", ""),
    (r"\\(?:text|textbf|textnormal|textit|mbox|mathrm|mathit|operatorname)\s*\{([^{}]*)\}", r" \1 "),
    (r"\\(" + _FUNCTION_NAMES + r")\b", r" \1 "),
    (r"\\approx|≈", "≈"),
    (r"\\neq?\b|≠|!=", "≠"),
    (r"\\lt\b", "<"),
    (r"\\gt\b", ">"),
    (r"\\in\b|∈", "∈"),
    (r"\\cup\b|∪", "∪"),
    (r"\\pm\b|±", "±"),
    (r"\\[cdt]frac", r"\\frac"),
    (r"\^\s*\{?\\circ\}?|°|\\degree", ""),
    (r"\\%|%", "%"),
    (r"\\\$|\$", ""),
    (r"\\cdot|\\times|×|·", "*"),
    (r"\\div|÷", "/"),
    (r"\\pi\b|π", " pi "),
    (r"\\infty|∞", " oo "),
    (r"\\le\b|\\leq\b|≤", "<="),
    (r"\\ge\b|\\geq\b|≥", ">="),
    (r"\\lbrace|\\\{", "«"),
    (r"\\rbrace|\\\}", "»"),
    (r"\\[,;:> ]|~|\\quad|\\qquad", " "),
    (r"−|–", "-"),
    (r"√", " sqrt "),
]


def _match_braces(s: str, start: int) -> int:
    """Index just after the group starting at s[start] == '{'."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ParseError("unbalanced braces")


def _take_group(s: str, i: int) -> tuple[str, int]:
    """A LaTeX argument at s[i:]: a braced group or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ParseError("missing argument")
    if s[i] == "{":
        end = _match_braces(s, i)
        return s[i + 1:end - 1], end
    return s[i], i + 1


def _expand_macros(s: str) -> str:
    """Rewrite \\frac{a}{b}, \\sqrt{x}, \\sqrt[n]{x} and \\overline{d} into plain syntax."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            num, i = _take_group(s, i + 5)
            den, i = _take_group(s, i)
            out.append(f"(({_expand_macros(num)})/({_expand_macros(den)}))")
        elif s.startswith("\\sqrt", i):
            i += 5
            index = None
            if i < len(s) and s[i] == "[":
                close = s.index("]", i)
                index, i = s[i + 1:close], close + 1
            arg, i = _take_group(s, i)
            arg = _expand_macros(arg)
            out.append(f"(root(({arg}),({_expand_macros(index)})))" if index else f"(sqrt({arg}))")
        elif s.startswith("\\overline", i):
            digits, i = _take_group(s, i + 9)
            out.append(f"R{digits}R")  # a repeating block, resolved by the number rule
        elif s[i] == "{":
            out.append("(")
            i += 1
        elif s[i] == "}":
            out.append(")")
            i += 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _repeating(integer: str, fixed: str, block: str) -> Fraction:
    """integer.fixed(block)(block)... as an exact fraction."""
    base = Fraction(int(integer or "0"))
    fixed_value = Fraction(int(fixed), 10 ** len(fixed)) if fixed else Fraction(0)
    block_value = Fraction(int(block), (10 ** len(block) - 1) * 10 ** len(fixed))
    return base + fixed_value + block_value


def _ellipsis_repeating(match: re.Match) -> str:
    """0.333... / 0.1666\\ldots / 0.142857142857... -> an exact fraction in brackets."""
    sign, integer, digits = match.group(1) or "", match.group(2), match.group(3)
    for period in range(1, len(digits) // 2 + 1):
        block = digits[-period:]
        repeats = 0
        pos = len(digits)
        while pos - period >= 0 and digits[pos - period:pos] == block:
            repeats += 1
            pos -= period
        if repeats >= 2:
            value = _repeating(integer, digits[:pos], block)
            return f"{sign}({value.numerator}/{value.denominator})"
    value = _repeating(integer, digits[:-1], digits[-1])
    return f"{sign}({value.numerator}/{value.denominator})"


def _bracketed_pair(m: re.Match) -> bool:
    """Whether a digit run with one comma is the whole content of a bracket pair: "(12,102)"."""
    before, after = m.string[:m.start()].rstrip(), m.string[m.end():].lstrip()
    return m.group(2).count(",") == 1 and before[-1:] in ("(", "[") and after[:1] in (")", "]")


def normalize(s: str) -> str:
    """LaTeX / plain text -> the parser's language. Raises ParseError on what it cannot read."""
    if len(s) > MAX_ANSWER_CHARS:
        raise ParseError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    s = s.strip().strip("$").strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    for pattern, replacement in _LATEX_REPLACEMENTS:
        s = re.sub(pattern, replacement, s)
    # Thousands separators: 1,234,567 / 1\,234 (now '1 234') / 1 234 -- not '2 1/4', not '1, 2', and
    # not the two ends of a bracketed pair ("(12,102)" is an interval or a point, not 12102).
    s = re.sub(r"(?<![\d.])(\d{1,3})((?:[, ]\d{3})+)(?![\d/])(?!\.\d*[, ]\d)",
               lambda m: m.group(0) if _bracketed_pair(m) else
               m.group(1) + m.group(2).replace(",", "").replace(" ", ""), s)
    # Mixed numbers: 2\frac{1}{4} and 2 1/4 are 2 + 1/4, not 2 * 1/4.
    s = re.sub(r"(?<![\d.)*/^])(\d+)\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}", r"(\1+\\frac{\2}{\3})", s)
    s = re.sub(r"(?<![\d.)*/^])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])", r"(\1+\2/\3)", s)
    s = re.sub(r"(-?)(\d*)\.(\d+)\s*(?:\\ldots|\\cdots|\.\.\.|…)", _ellipsis_repeating, s)
    # "{1, 2, 3}" around a whole list is a set (a bare brace group is otherwise just grouping).
    if s.startswith("{") and s.endswith("}") and "," in s:
        try:
            if _match_braces(s, 0) == len(s):
                s = "«" + s[1:-1] + "»"
        except ParseError:
            pass
    # Answers joined by "or" / "and" ("(11,7) or (7,11)", "6 and 8") are a list.
    s = re.sub(r"(?:,\s*)?\b(?:or|and)\b\s*", ", ", s) if re.search(r"\b(?:or|and)\b", s) else s
    s = _expand_macros(s)
    # Unit and filler words ("5 apples", "12 cm") are not part of the value.
    s = re.sub(r"(?<![a-zA-Z\\])(?<!_\()(?!(?:sqrt|root|pi|oo|" + _FUNCTION_NAMES + r")\b)(?:[a-zA-Z]{3,}|cm|mm|km|kg|mg|ft|lb|oz|hr|ml)\b", " ", s)
    if "\\" in s:
        raise ParseError(f"unsupported LaTeX command in {s!r}")
    s = re.sub(r"(\d*)\.(\d*)R(\d+)R", lambda m: "({0})".format(
        "/".join(map(str, _repeating(m.group(1), m.group(2), m.group(3)).as_integer_ratio()))), s)
    s = re.sub(r"\bsqrt\s*(\d+(?:\.\d+)?)", r"sqrt(\1)", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if not s:
        raise ParseError("empty answer")
    return s


# =============================================================================================
# The whitelisted parser
# =============================================================================================

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<func>(?:" + _FUNCTION_NAMES + r")(?![a-zA-Z]))"
                    r"|(?P<name>sqrt|root|pi|oo|[a-zA-Z]_(?:\([a-zA-Z0-9]{1,8}\)|[a-zA-Z0-9])|[a-zA-Z])(?![a-zA-Z])"
                    r"|(?P<op>\*\*|<=|>=|[-+*/^()\[\],=%<>|]))")


@dataclass(frozen=True)
class Num:
    """A parsed value with how it was written (decimal places, percent) for the equality rules."""

    value: sympy.Expr
    decimals: int | None = None   # places after the point when written as a decimal literal
    percent: bool = False


def _tokenize(s: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    s = s.rstrip()
    while pos < len(s):
        match = _TOKEN.match(s, pos)
        if not match or match.end() == pos:
            raise ParseError(f"unexpected character {s[pos:pos + 10]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _check_power(base: sympy.Expr, exponent: sympy.Expr) -> None:
    """Refuse powers whose exact value would be too big to compute quickly."""
    if not exponent.is_number:
        raise TooLarge("symbolic exponent")
    if base.free_symbols:
        if exponent.is_Rational and abs(exponent) > MAX_SYMBOLIC_EXPONENT:
            raise TooLarge(f"exponent {exponent} on an expression with variables")
        return
    if exponent.is_Rational:
        e = abs(Fraction(int(exponent.p), int(exponent.q)))
        if base.is_Rational:
            b = Fraction(int(base.p), int(base.q))
            size = max(abs(b.numerator).bit_length(), abs(b.denominator).bit_length())
            if size > 1 and e * size > MAX_RESULT_BITS:
                raise TooLarge(f"power with about {int(e * size)} bits")
        elif e > 4096:
            raise TooLarge("power of an irrational with a large exponent")
    elif exponent.is_real is False:
        raise ParseError("complex exponent")


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
    unary := ('-'|'+') unary | power ; power := atom ('^' unary)? ; atom := number | name | call | (expr)."""

    def __init__(self, tokens, names=None):
        self.tokens, self.i, self.depth = tokens, 0, 0
        self.names = names or {}  # name -> sympy object it stands for (matrix placeholders)

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self, value=None):
        kind, text = self.peek()
        if kind is None or (value is not None and text != value):
            raise ParseError(f"expected {value!r}, found {text!r}")
        self.i += 1
        return kind, text

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooLarge("nested too deeply")

    def expr(self):
        self.nest()
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = Num(value.value + rhs.value if op == "+" else value.value - rhs.value)
        self.depth -= 1
        return value

    def term(self):
        value = self.unary()
        while True:
            kind, text = self.peek()
            if text in ("*", "/"):
                self.take()
                rhs = self.unary()
                if text == "/":
                    if rhs.value == 0:
                        raise ParseError("division by zero")
                    value = Num(value.value / rhs.value)
                else:
                    value = Num(value.value * rhs.value)
            elif kind in ("num", "name", "func") or text == "(":
                value = Num(value.value * self.unary().value)  # implicit product: 2x, 2 sqrt(3), 2 sin x
            else:
                return value

    def unary(self):
        text = self.peek()[1]
        if text in ("-", "+"):
            self.take()
            self.nest()
            inner = self.unary()
            self.depth -= 1
            return Num(-inner.value, inner.decimals, inner.percent) if text == "-" else inner
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek()[1] in ("^", "**"):
            self.take()
            self.nest()
            exponent = self.unary()
            self.depth -= 1
            _check_power(base.value, exponent.value)
            base = Num(sympy.Pow(base.value, exponent.value))
        if self.peek()[1] == "%":
            self.take()
            base = Num(base.value, base.decimals, percent=True)
        return base

    def function(self, name: str):
        """sin(x), sin x, sin 2x, sin^2 x: without brackets the argument is the run of numbers and
        letters up to the next operator or function ("2 sin b cos a" is 2 sin(b) cos(a))."""
        power = None
        if self.peek()[1] in ("^", "**"):
            self.take()
            power = self.atom().value
        self.nest()
        if self.peek()[1] == "(":
            arg = self.atom().value
        else:
            arg = self.power().value
            while self.peek()[0] in ("num", "name"):
                arg = arg * self.power().value
        self.depth -= 1
        value = _FUNCTIONS[name](arg)
        if power is not None:
            _check_power(value, power)
            value = value ** power
        if value.is_number and value.has(sympy.exp, sympy.Pow) and abs(sympy.N(value, 5)) > 10 ** 300:
            raise TooLarge("function value too large")
        return Num(value)

    def atom(self):
        kind, text = self.take()
        if kind == "func":
            return self.function(text)
        if kind == "num":
            mantissa, _, exp = text.lower().partition("e")
            value = Fraction(mantissa) * Fraction(10) ** int(exp or 0) if abs(int(exp or 0)) <= 400 else None
            if value is None:
                raise TooLarge("exponent in scientific notation")
            decimals = len(mantissa.split(".")[1]) if "." in mantissa and not exp else None
            return Num(sympy.Rational(value.numerator, value.denominator), decimals)
        if kind == "name":
            if text == "pi":
                return Num(sympy.pi)
            if text == "oo":
                return Num(sympy.oo)
            if text in self.names:
                return Num(self.names[text])
            if text in ("sqrt", "root"):
                self.take("(")
                arg = self.expr().value
                index = 2
                if text == "root":
                    self.take(",")
                    index = self.expr().value
                self.take(")")
                if text == "root":
                    _check_power(arg, 1 / index)
                    return Num(sympy.root(arg, index))
                if arg.is_Rational and max(arg.p.bit_length(), arg.q.bit_length()) > MAX_RESULT_BITS:
                    raise TooLarge("square root of a huge number")
                return Num(sympy.sqrt(arg))
            return Num(sympy.Symbol(text.replace("(", "").replace(")", "")))
        if text == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if text == "|":  # |x|: an absolute value (no implicit product starts with "|", so "|a|b|" is refused)
            inner = self.expr()
            self.take("|")
            return Num(sympy.Abs(inner.value))
        raise ParseError(f"unexpected {text!r}")


@dataclass(frozen=True)
class Answer:
    """A parsed answer: a number/expression, an equation, a tuple, a set, an interval or a union of
    them, an inequality's solution set, a matrix, or a word answer."""

    kind: str                     # number, expr, equation, tuple, set, interval, relation, matrix, text
    items: tuple = ()             # (Num,) for number/expr; element Answers for tuple/set; rows for matrix
    interval: sympy.Set | None = None   # the set an interval / union / relation / real pair stands for
    equation: sympy.Expr | None = None  # lhs - rhs, for "y = 2x + 1" and "2x - y + 1 = 0"
    text: str | None = None             # a word answer, normalised
    variable: sympy.Symbol | None = None  # the variable of an inequality
    ends: tuple = ()                    # (Num, Num) ends of a plain interval, as written


def _parse_expression(s: str, names: dict | None = None) -> Num:
    tokens = _tokenize(s)
    if not tokens:
        raise ParseError("empty expression")
    parser = _Parser(tokens, names)
    value = parser.expr()
    if parser.i != len(tokens):
        raise ParseError(f"unexpected {parser.peek()[1]!r}")
    return value


def _split_top_level(s: str, separator: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for ch in s:
        if ch in "([{«":
            depth += 1
        elif ch in ")]}»":
            depth -= 1
        if ch == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


_NAME = r"[a-zA-Z](?:_(?:\([a-zA-Z0-9]{1,8}\)|[a-zA-Z0-9]))?"
_LONE_LHS = re.compile(rf"\s*(?:{_NAME}|{_NAME}\(\s*{_NAME}\s*\)|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\)"
                       r"|[A-Z]{1,4}|\|[A-Z]{1,4}\|"
                       rf"|{_NAME}\s*:\s*{_NAME}|\(\(\s*[A-Z]{{1,4}}\s*\)/\(\s*[A-Z]{{1,4}}\s*\)\))\s*")
# x, f(x), (p, q), AB, |AB|, a ratio of names (V_1 : V_2, A:B) and a ratio of segments (\frac{NO}{BO})


def _parse_item(s: str) -> Answer:
    """One element: an expression, or an equation. "x = 3" and "(p, q) = (3, 2)" compare as their
    right-hand side (after a lone variable or a tuple of variables) and "x = 3" also as the equation
    x - 3 = 0; any other equation ("2x - y + 1 = 0") is kept as lhs - rhs, compared as an equation."""
    parts = re.split(r"(?<![<>≠!])=", s)
    if len(parts) == 1 and ":" in s:
        return _ratio(s)
    if len(parts) == 1:
        value = _parse_expression(s)
        return Answer(_kind(value), (value,))
    lhs, rhs = parts[0].strip(), parts[-1].strip()
    if not rhs or not lhs:
        return _parse_item(lhs or rhs)
    if _LONE_LHS.fullmatch(lhs):
        value = _parse_text(rhs)
        if value.kind in ("number", "expr") and re.fullmatch(_NAME, lhs):
            symbol = sympy.Symbol(lhs.replace("(", "").replace(")", ""))
            return Answer(value.kind, value.items, equation=symbol - value.items[0].value)
        return value
    left, right = _parse_expression(lhs).value, _parse_expression(rhs).value
    if not left.free_symbols and not right.free_symbols:
        return _parse_text(rhs)  # a computation "36 + 32 = 68" states its result
    return Answer("equation", equation=left - right)


def _ratio(s: str) -> Answer:
    """"7:32" is the number 7/32 (so 7:32 = 14:64 = 7/32). Only two numeric terms, the second
    non-zero; anything else (1:2:3, x:y, a time written 7:32 against 7.32) is refused or unequal."""
    terms = s.split(":")
    if len(terms) != 2:
        raise ParseError("only a ratio of two numbers is read")
    a, b = (_parse_expression(t).value for t in terms)
    if a.free_symbols or b.free_symbols or b == 0:
        raise ParseError("a ratio of two non-zero numbers only")
    return Answer("number", (Num(a / b),))


def _kind(num: Num) -> str:
    return "expr" if num.value.free_symbols else "number"


def _expand_pm(s: str) -> list[str]:
    """"1 ± sqrt(5)" -> ["1 + sqrt(5)", "1 - sqrt(5)"]; more than one ± is refused."""
    if s.count("±") > 1:
        raise ParseError("more than one ±")
    return [s.replace("±", "+"), s.replace("±", "-")] if "±" in s else [s]


def _elements(parts: list[str]) -> tuple:
    return tuple(_parse_text(q) for p in parts if p for q in _expand_pm(p))


_WORD_WRAPPER = re.compile(r"\\(?:text|textbf|textnormal|textit|mathrm|mbox)\s*\{([^{}]*)\}")
_MATH_WORDS = {"pi", "sqrt", "oo", "root", *_FUNCTIONS}


def _text_answer(raw: str) -> Answer | None:
    """A word answer ("\\text{Evelyn}", "odd", "No solution"): no digits, only letters and light
    punctuation, and either wrapped in \\text{} or holding a word of three or more letters. Compared
    by normalised string (case and spacing ignored)."""
    t = raw.strip().strip("$").strip()
    t = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", t).strip().rstrip(".").strip()
    wrapped = _WORD_WRAPPER.fullmatch(t)
    content = wrapped.group(1) if wrapped else t
    content = _WORD_WRAPPER.sub(lambda m: m.group(1), content).strip()
    if not content or not re.fullmatch(r"[A-Za-z][A-Za-z .,'\-]*", content):
        return None
    words = re.findall(r"[A-Za-z]+", content)
    if not wrapped and (all(len(w) < 3 or w.lower() in _MATH_WORDS for w in words)):
        return None
    return Answer("text", text=" ".join(words).casefold() if len(content) > 1 else content)


_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[lcr| ]*\})?(.*?)\\end\{\1\}", re.S)
MAX_MATRICES = 10            # matrices in one answer's arithmetic
MAX_MATRIX_POWER = 8         # M^n: larger n is refused
MAX_MATRIX_PRODUCTS = 8      # matrix-by-matrix multiplications in one answer


def _matrix_cells(body: str) -> tuple:
    rows = [r for r in re.split(r"\\\\", body) if r.strip()]
    cells = tuple(tuple(_parse_text(normalize(c)) for c in r.split("&")) for r in rows)
    if not cells or len({len(r) for r in cells}) != 1:
        raise ParseError("ragged matrix")
    return cells


def _matrix_answer(raw: str) -> Answer | None:
    """A matrix, or arithmetic on matrices, as its resulting matrix. Of an equation
    (`A + B = \\begin{pmatrix}...`) the last side is the answer. That side is read by the same
    whitelisted parser with each matrix as a placeholder name, and the result is computed by sympy's
    matrix arithmetic: sums, differences, scalar multiples, products in the order written and small
    powers (`M + N`, `2M`, `\\frac{1}{2}M`, `MN`, `M^2`; products of rational matrices only, size-checked
    before they are computed, at most MAX_MATRIX_PRODUCTS of them). Anything else around a matrix (a word, an
    unknown command, a scalar added to a matrix, a shape mismatch) is refused, never ignored: `2M` is
    not `M`."""
    if not _MATRIX.search(raw):
        return None
    cut = 0
    for piece in re.finditer(r"(?<![<>!\\])=", _MATRIX.sub(lambda m: "#" * len(m.group(0)), raw)):
        cut = piece.end()
    side = raw[cut:]
    matches = list(_MATRIX.finditer(side))
    if not matches:
        raise ParseError("an equation whose last side is not a matrix")
    if len(matches) > MAX_MATRICES:
        raise TooLarge("too many matrices")
    outside = _MATRIX.sub(" ", side)
    letter = next((c for c in "QWZJKVU" if c not in outside), None)
    if letter is None:
        raise ParseError("no free placeholder name")
    names, pieces, last = {}, [], 0
    for k, match in enumerate(matches):
        name = f"{letter}_{k}"
        names[name] = sympy.Symbol(name, commutative=False)
        pieces += [side[last:match.start()], f" {name} "]
        last = match.end()
    pieces.append(side[last:])
    rest = _WORD_WRAPPER.sub(" ", "".join(pieces))  # \\text{...} labels
    if re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", rest)):
        raise ParseError("words around a matrix")
    rest = normalize(rest)
    if re.fullmatch(r"\[.*\]", rest) and _encloses(rest):
        rest = "(" + rest[1:-1] + ")"  # \\left[ M \\right]
    if rest.strip() == f"{letter}_0" or rest.strip() == f"({letter}_0)":
        return Answer("matrix", _matrix_cells(matches[0].group(2)))
    if any(m.group(1) in ("vmatrix", "Vmatrix") for m in matches):
        raise ParseError("arithmetic on a determinant or norm (vmatrix) is not matrix arithmetic")
    values = {}
    for match, (name, symbol) in zip(matches, names.items()):
        cells = _matrix_cells(match.group(2))
        if any(c.kind not in ("number", "expr") or c.items[0].percent for row in cells for c in row):
            raise ParseError("matrix arithmetic on entries that are not values")
        values[symbol] = sympy.ImmutableMatrix([[c.items[0].value for c in row] for row in cells])
    result = _matrix_value(_parse_expression(rest, names).value, values)
    if not isinstance(result, sympy.MatrixBase):
        raise ParseError("matrix arithmetic that gives no matrix")
    return Answer("matrix", tuple(tuple(Answer(_kind(Num(v)), (Num(v),)) for v in result.row(i))
                                  for i in range(result.rows)))


def _matrix_bits(m) -> int:
    """Bits of the largest numerator or denominator among a matrix's rational entries."""
    return max((max(int(v.p).bit_length(), int(v.q).bit_length()) for v in m if v.is_Rational), default=1)


def _matrix_product(a, b, budget: list):
    """a * b for a scalar or matrix on each side. A product of two matrices needs rational entries
    (with variables or irrationals each product doubles the size of the entries' expressions), one
    unit of `budget` (MAX_MATRIX_PRODUCTS in all) and an estimated result within MAX_RESULT_BITS,
    checked before it is computed."""
    if isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase):
        if not all(v.is_Rational for v in (*a, *b)):
            raise ParseError("a product of matrices whose entries are not all rational")
        budget[0] -= 1
        if budget[0] < 0:
            raise TooLarge("too many matrix products")
        if _matrix_bits(a) + _matrix_bits(b) + a.cols.bit_length() > MAX_RESULT_BITS:
            raise TooLarge("matrix product too large")
    return a * b


def _matrix_value(expr, values: dict, budget: list | None = None):
    """Evaluate a parsed expression over matrix placeholders with sympy matrices (in written order)."""
    budget = [MAX_MATRIX_PRODUCTS] if budget is None else budget
    if expr in values:
        return values[expr]
    if not expr.has(*values):
        return expr  # a scalar
    try:
        if isinstance(expr, sympy.Add):
            terms = [_matrix_value(a, values, budget) for a in expr.args]
            if not all(isinstance(t, sympy.MatrixBase) for t in terms):
                raise ParseError("a scalar added to a matrix")
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            return total
        if isinstance(expr, sympy.Mul):
            product = sympy.Integer(1)
            for factor in expr.args:  # non-commutative placeholders keep the written order
                product = _matrix_product(product, _matrix_value(factor, values, budget), budget)
            return product
        if isinstance(expr, sympy.Pow) and expr.base in values and expr.exp.is_Integer \
                and 0 < expr.exp <= MAX_MATRIX_POWER:
            power = values[expr.base]
            for _ in range(int(expr.exp) - 1):
                power = _matrix_product(power, values[expr.base], budget)
            return power
    except (sympy.ShapeError, sympy.NonSquareMatrixError) as error:
        raise ParseError(f"matrix shapes: {error}") from error
    raise ParseError("unsupported matrix arithmetic")


def _relation(text: str) -> Answer:
    """An inequality in one variable ("x <= 3", "-2 <= x <= 7", "5 >= x", "-x > -1", "x ≠ 5") as its
    solution set over the reals. Each side must be linear in the variable with a numeric coefficient."""
    # "0 < f(x) < 1": a function value is the quantity bounded (compared as the set it lies in).
    text = re.sub(r"(?<![A-Za-z_])([fgh])\(\s*([a-z])\s*\)", r"\1_(\2)", text)
    pieces = re.split(r"(<=|>=|<|>|≠)", text)
    operands, ops = [_parse_expression(p).value for p in pieces[0::2]], pieces[1::2]
    symbols = set().union(*(o.free_symbols for o in operands))
    if len(symbols) != 1:
        raise ParseError("an inequality needs exactly one variable")
    (var,) = symbols
    absolute = set().union(*(o.atoms(sympy.Abs) for o in operands))
    if absolute:
        # "1 <= |z| <= 3/2": solve for t = |z| (linear as below), keep t >= 0, then z = ±t.
        if absolute != {sympy.Abs(var)}:
            raise ParseError("only |x| of the variable itself")
        t = sympy.Dummy("t")
        operands = [o.subs(sympy.Abs(var), t) for o in operands]
        if any(o.has(var) for o in operands):
            raise ParseError("the variable both inside and outside |...|")
        inner = _relation_region(operands, ops, t)
        inner = sympy.Intersection(inner, sympy.Interval(0, sympy.oo))
        region = sympy.Union(inner, sympy.imageset(sympy.Lambda(t, -t), inner))
        if region.atoms(sympy.ImageSet):
            raise ParseError("absolute-value region not reducible to intervals")
        return Answer("relation", interval=region, variable=var)
    return Answer("relation", interval=_relation_region(operands, ops, var), variable=var)


def _relation_region(operands: list, ops: list, var) -> sympy.Set:
    """The set of real `var` where the chain `operands[0] ops[0] operands[1] ...` holds (linear sides)."""
    region = sympy.Reals
    for left, op, right in zip(operands, ops, operands[1:]):
        difference = sympy.expand(left - right)
        a, b = difference.coeff(var, 1), difference.coeff(var, 0)
        if sympy.expand(a * var + b - difference) != 0 or a.free_symbols or b.free_symbols or a == 0:
            raise ParseError("not linear in the variable")
        if not a.is_real or not b.is_real:
            raise ParseError("non-real inequality")
        bound, flip = -b / a, bool(a < 0)
        op = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op) if flip else op
        part = {"<": sympy.Interval.open(-sympy.oo, bound), "<=": sympy.Interval(-sympy.oo, bound),
                ">": sympy.Interval.open(bound, sympy.oo), ">=": sympy.Interval(bound, sympy.oo),
                "≠": sympy.Union(sympy.Interval.open(-sympy.oo, bound), sympy.Interval.open(bound, sympy.oo))}[op]
        region = sympy.Intersection(region, part)
    return region


def _parse_text(text: str) -> Answer:
    """The normalised answer text -> an Answer (recursive for elements of tuples and sets)."""
    text = text.strip()
    if not text:
        raise ParseError("empty element")
    if "≈" in text:  # "x ≈ 11" is x = 11; "x = 1/3 ≈ 0.33" keeps the exact value
        left, _, right = text.partition("≈")
        text = left if "=" in left or not re.fullmatch(_NAME, left.strip()) else f"{left}={right}"
    member = _split_top_level(text, "∈")
    if len(member) == 2 and re.fullmatch(_NAME, member[0]):
        return _parse_text(member[1])
    unions = _split_top_level(text, "∪")
    if len(unions) > 1:
        parts = [_as_set(_parse_text(p)) for p in unions]
        if any(p is None for p in parts):
            raise ParseError("a union of things that are not sets")
        return Answer("interval", interval=sympy.Union(*parts))
    if re.search(r"<|>|≠", text) and len(_split_top_level(text)) == 1:
        return _relation(text)
    if text.startswith("«") and text.endswith("»") and _encloses(text):
        return Answer("set", _elements(_split_top_level(text[1:-1])))
    bracketed = re.fullmatch(r"([\[(])(.*)([\])])", text)
    if bracketed and not _encloses(text):
        bracketed = None
    if bracketed and len(_split_top_level(bracketed.group(2))) == 2 and "," in bracketed.group(2):
        elements = _elements(_split_top_level(bracketed.group(2)))
        ends = [e.items[0] if e.kind == "number" and e.equation is None else None for e in elements]
        real = len(elements) == 2 and None not in ends and _is_real(*(e.value for e in ends))
        left, right = (e.value for e in ends) if real else (None, None)
        if bracketed.group(1) == "(" and bracketed.group(3) == ")":
            return Answer("tuple", elements, sympy.Interval(left, right, True, True) if real else None,
                          ends=tuple(ends) if real else ())
        if not real:
            raise ParseError("interval with non-real ends")
        return Answer("interval", interval=sympy.Interval(
            left, right, bracketed.group(1) == "(", bracketed.group(3) == ")"), ends=tuple(ends))
    if bracketed and len(_split_top_level(bracketed.group(2))) > 2 and bracketed.group(1) == "(":
        return Answer("tuple", _elements(_split_top_level(bracketed.group(2))))
    parts = _split_top_level(text)
    if len(parts) > 1 or "±" in text:
        return Answer("set", _elements(parts))
    return _parse_item(text)


def _as_set(answer: Answer) -> sympy.Set | None:
    if answer.kind in ("interval", "relation") or (answer.kind == "tuple" and answer.interval is not None):
        return answer.interval
    if answer.kind == "set" and all(a.kind == "number" for a in answer.items):
        return sympy.FiniteSet(*(a.items[0].value for a in answer.items))
    if answer.kind == "number":
        return sympy.FiniteSet(answer.items[0].value)
    return None


def parse_answer(s: str | None) -> Answer:
    """Parse an extracted answer safely. Raises ParseError (or TooLarge) when it cannot."""
    if s is None:
        raise ParseError("no answer")
    with _time_limit(TIME_LIMIT_S):
        raw = str(s)
        if len(raw) > MAX_ANSWER_CHARS:
            raise ParseError(f"answer longer than {MAX_ANSWER_CHARS} characters")
        raw = _undouble_backslashes(raw)
        try:
            return _text_answer(raw) or _matrix_answer(raw) or _parse_text(_assignment_groups(normalize(raw)).replace(";", ","))
        except TooLarge:
            raise
        except ParseError:
            ends = _chain_ends(raw)
            if ends is None:
                raise
            return _parse_text(normalize(ends))


# What may not stand between two "=" of a chain whose middle we skip: separators, words, relations,
# arrows and logical connectives (any of them makes it more than one chain of equal quantities).
_CHAIN_BREAK = re.compile(r"[,;:&<>|≤≥≠≈∈→⇒⇔]|\\\\|\b(?:or|and|if|then|for|where|when|so|but)\b|\\(?:implies|impliedby|iff|to|"
                          r"mapsto|gets|mbox|operatorname|q?quad|in|notin|ni|cong|land|lor|wedge|vee|lnot|neg|forall|"
                          r"exists|begin|end|pm|mp|cup|cap|setminus|text[a-z]*|math[a-z]*)(?![a-zA-Z])"
                          r"|\\[a-zA-Z]*(?:arrow|eq|sim|equiv|parallel|perp|mid|prec|succ|subset|supset|lt|gt)[a-zA-Z]*")


def _chain_ends(raw: str) -> str | None:
    """`a = b = ... = z` -> `a = z` when a middle side is what failed to parse (`1 = \\zzz = x = 0`).
    A chain of equalities states its last side (the parser already reads only the first and last
    sides), so an unknown command in a middle side does not change the answer, provided nothing
    there breaks the chain: no separator, word, relation, arrow or connective (`x = 1 \\implies y = 2`
    and `x = 3 \\text{ or } \\zzz = 5` are not chains), and braces balance in every side."""
    text = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", raw.strip().strip("$").strip()).strip()
    sides = re.split(r"(?<![<>!\\])=", text)
    if len(sides) < 3 or not sides[0].strip() or not sides[-1].strip():
        return None
    for side in sides:
        depth = 0
        for ch in side:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth < 0:
                return None
        if depth:
            return None
    if any(_CHAIN_BREAK.search(side) for side in sides[1:-1]):
        return None
    return f"{sides[0]}={sides[-1]}"


def _assignment_groups(text: str) -> str:
    """"p=5,q=2;p=7,q=2" -> "(5,2),(7,2)": groups separated by ";", each assigning the same distinct
    names in the same order, are the solution pairs they list (in the order the names are written)."""
    groups = _split_top_level(text, ";")
    if len(groups) < 2:
        return text
    names, tuples = None, []
    for group in groups:
        pairs = [re.fullmatch(rf"({_NAME})\s*=\s*([^=<>≠]+)", part) for part in _split_top_level(group)]
        if not all(pairs):
            return text
        group_names = [m.group(1) for m in pairs]
        if len(set(group_names)) != len(group_names) or len(group_names) < 2 or names not in (None, group_names):
            return text
        names = group_names
        tuples.append("(" + ",".join(m.group(2) for m in pairs) + ")")
    return ",".join(tuples)


def _undouble_backslashes(raw: str) -> str:
    """`\\\\le`, `\\\\frac` (a command whose backslash was escaped twice, as in JSON-encoded or
    Python-quoted LaTeX) -> `\\le`, `\\frac`. Outside an environment (`\\begin{...}`, where `\\\\` ends
    a row) a LaTeX line break is meaningless inside an answer, so a line break followed directly by
    letters can only be a doubled backslash. Math-Verify's normaliser applies the same rule."""
    if "\\begin" in raw or "\\\\" not in raw:
        return raw
    return re.sub(r"\\\\(?=[a-zA-Z])", r"\\", raw)


def _encloses(text: str) -> bool:
    """Whether the first bracket of `text` closes at its last character: "(1, 2]" yes, "(1)(2)" no."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch in "([«"
        depth -= ch in ")]»"
        if depth == 0 and i < len(text) - 1:
            return False
    return True


def _is_real(*values) -> bool:
    return all(v.is_real or v in (sympy.oo, -sympy.oo) for v in values)


# =============================================================================================
# Equality and partial credit
# =============================================================================================


@contextmanager
def _time_limit(seconds: float):
    """A wall-clock backstop where signals work (the main thread). The size guards above are what
    keep C-level big-integer work bounded; this only catches slow pure-Python sympy paths."""
    if threading.current_thread() is not threading.main_thread() or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def handler(signum, frame):
        raise GradingTimeout(f"grading took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _terminating(value: sympy.Expr) -> bool:
    if not value.is_Rational:
        return False
    q = int(value.q)
    while q % 2 == 0:
        q //= 2
    while q % 5 == 0:
        q //= 5
    return q == 1


def _numbers_equal(a: Num, b: Num) -> bool:
    x, y = a.value, b.value
    candidates_x = [x] + ([x / 100] if a.percent else [])
    candidates_y = [y] + ([y / 100] if b.percent else [])
    return any(_values_equal(cx, cy, a.decimals, b.decimals)
               for cx in candidates_x for cy in candidates_y)


def _values_equal(x, y, decimals_x, decimals_y) -> bool:
    if x == y:  # structural equality first: also covers oo == oo, where x - y is nan
        return True
    if x.free_symbols or y.free_symbols:
        return _expressions_equal(x, y)
    diff = x - y
    if diff == 0:
        return True
    if x.is_Rational and y.is_Rational:
        if _STRICT.get():
            return False  # strict: exact values need exact answers (0.33 is not 1/3)
        # Exact unless one side is a decimal standing for a value with no finite decimal form.
        for dec, approx, exact in ((decimals_x, x, y), (decimals_y, y, x)):
            if dec is not None and not _terminating(exact):
                return _decimal_matches(approx, exact, dec)
        return False
    # One side irrational (pi, sqrt 2): equal exactly, or (not strict) as a rounded decimal.
    for dec, approx, exact in ((decimals_x, x, y), (decimals_y, y, x)):
        if dec is not None and approx.is_Rational:
            if _STRICT.get():
                return False
            return _decimal_matches(approx, exact, dec)
    try:
        return abs(sympy.N(diff, 50)) < sympy.Float("1e-40", 50) * max(1, abs(sympy.N(y, 50)))
    except (TypeError, ValueError):
        return False


def _decimal_matches(decimal: sympy.Rational, exact: sympy.Expr, places: int) -> bool:
    value = sympy.N(exact, 60)
    if not value.is_real:
        return False
    rounded = sympy.Rational(str(round(sympy.Float(value, 60), places)))
    if rounded != decimal:
        return False
    error = abs(sympy.Rational(decimal) - sympy.nsimplify(value, rational=True))
    return exact == 0 or error <= sympy.Rational(RELATIVE_TOLERANCE) * abs(sympy.nsimplify(value, rational=True))


_POINTS = [sympy.Rational(2, 7), sympy.Rational(-3, 11), sympy.Rational(5, 3), sympy.Rational(13, 17),
           sympy.Rational(-19, 23)]
MAX_SIMPLIFY_OPS = 40        # sympy.simplify only on differences this small (it can run unbounded)
MAX_CANCEL_OPS = 400         # sympy.cancel (exact for rational functions) only up to this size


def _at_points(expr, symbols):
    """expr evaluated at five fixed rational points (one per symbol, shifted per symbol); None where
    undefined (a pole)."""
    values = []
    for k in range(len(_POINTS)):
        subs = {s: _POINTS[(k + j) % len(_POINTS)] + j for j, s in enumerate(symbols)}
        try:
            value = expr.subs(subs)
        except (ZeroDivisionError, TypeError):
            value = None
        if value is not None and (value.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo) or value.free_symbols):
            value = None
        values.append(value)
    return values


def _is_zero_number(value) -> bool:
    if value.is_Rational:
        return value == 0
    try:
        approx = sympy.N(value, 50)
    except (TypeError, ValueError):
        return False
    return abs(approx) < sympy.Float("1e-35", 50)


def _expressions_equal(x, y) -> bool:
    """Equal expressions in the same variables. The difference must vanish at five fixed rational
    points (exactly, or to 35 digits where functions make values irrational); then a rational
    function is confirmed exactly by `sympy.cancel`, and anything else (trigonometric, roots, logs) by
    guarded `sympy.simplify` when small, else by the 50-digit evaluation at the five points. Any
    point where the difference is non-zero decides "not equal" at once."""
    if x.free_symbols != y.free_symbols:
        return False
    symbols = sorted(x.free_symbols, key=str)
    diff = x - y
    if diff == 0:
        return True
    values = [v for v in _at_points(diff, symbols) if v is not None]
    if len(values) < 3 or not all(_is_zero_number(v) for v in values):
        return False
    size = sympy.count_ops(diff)
    if diff.is_rational_function(*symbols):
        return size <= MAX_CANCEL_OPS and sympy.cancel(diff) == 0
    if size <= MAX_SIMPLIFY_OPS and sympy.simplify(diff) == 0:
        return True
    return True  # zero to 35 digits at five points: an identity (documented rule)


def _equations_equal(d1, d2) -> bool:
    """lhs1 - rhs1 and lhs2 - rhs2 describe the same equation: same variables and d1 = c d2 for a
    non-zero constant c (so 2x - y + 1 = 0 is y = 2x + 1, and 2x + 4y - 3 = 0 is y = -x/2 + 3/4)."""
    if d1.free_symbols != d2.free_symbols or not d1.free_symbols:
        return d1 == d2
    symbols = sorted(d1.free_symbols, key=str)
    for a, b in zip(_at_points(d1, symbols), _at_points(d2, symbols)):
        if a is None or b is None or _is_zero_number(b):
            continue
        ratio = a / b
        if _is_zero_number(ratio):
            return False
        return _expressions_equal(d1, ratio * d2)
    return False


def _elements_equal(a, b) -> bool:
    if isinstance(a, Num) and isinstance(b, Num):
        return _numbers_equal(a, b)
    if isinstance(a, Answer) and isinstance(b, Answer):
        return _answers_equal(a, b)
    return False


def _items_equal(a: tuple, b: tuple, ordered: bool) -> bool:
    if len(a) != len(b):
        return False
    if ordered:
        return all(_elements_equal(x, y) for x, y in zip(a, b))
    remaining = list(b)
    for x in a:
        for j, y in enumerate(remaining):
            if _elements_equal(x, y):
                del remaining[j]
                break
        else:
            return False
    return True


def _distinct(items: tuple) -> tuple:
    """A set's elements without repeats ({3, 3, 5} is {3, 5})."""
    kept: list = []
    for item in items:
        if not any(_elements_equal(item, k) for k in kept):
            kept.append(item)
    return tuple(kept)


def _texts_equal(p: Answer, g: Answer) -> bool:
    if p.kind == g.kind == "text":
        return p.text == g.text
    text, other = (p, g) if p.kind == "text" else (g, p)
    # \text{E} against E: a word answer against the lone letter it names.
    return (other.kind == "expr" and other.equation is None and isinstance(other.items[0].value, sympy.Symbol)
            and str(other.items[0].value) == text.text)


def _regions_equal(p: Answer, g: Answer) -> bool:
    if p.kind == g.kind == "relation" and p.variable != g.variable:
        return False
    if p.ends and g.ends and p.interval is not None and g.interval is not None \
            and isinstance(p.interval, sympy.Interval) and isinstance(g.interval, sympy.Interval):
        # a plain interval: ends as written (the decimal rules apply: (0.6, 2.6667] is (3/5, 8/3])
        return (p.interval.left_open, p.interval.right_open) == (g.interval.left_open, g.interval.right_open) \
            and all(_numbers_equal(a, b) for a, b in zip(p.ends, g.ends))
    return p.interval == g.interval or bool(sympy.Complement(p.interval, g.interval) == sympy.EmptySet
                                            and sympy.Complement(g.interval, p.interval) == sympy.EmptySet)


def _answers_equal(p: Answer, g: Answer) -> bool:
    kinds = {p.kind, g.kind}
    if "text" in kinds:
        return _texts_equal(p, g)
    if kinds <= {"number", "expr"}:
        if p.equation is not None and g.equation is not None:
            return _equations_equal(p.equation, g.equation)
        return _numbers_equal(p.items[0], g.items[0])
    if "equation" in kinds:
        return (kinds <= {"equation", "number", "expr"} and p.equation is not None and g.equation is not None
                and _equations_equal(p.equation, g.equation))
    if p.kind == g.kind == "tuple":
        return _items_equal(p.items, g.items, ordered=True)
    if p.kind == g.kind == "set":
        return _items_equal(_distinct(p.items), _distinct(g.items), ordered=False)
    if p.kind == g.kind == "matrix":
        return len(p.items) == len(g.items) and all(_items_equal(a, b, ordered=True) for a, b in zip(p.items, g.items))
    if kinds & {"interval", "relation"} and kinds <= {"interval", "relation", "tuple"}:
        if p.interval is None or g.interval is None:
            return False
        return _regions_equal(p, g)
    return False


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one completion (or one extracted answer) against a gold answer."""

    extracted: str | None
    correct: bool
    credit: float
    reason: str = ""


def _as_answer(x) -> Answer:
    return x if isinstance(x, Answer) else parse_answer(x)


def answers_equal(pred, gold, *, strict: bool = False) -> bool:
    """Whether two answers (strings or parsed `Answer`s) are mathematically equal. Never raises.

    strict=True: exact values need exact answers (0.33 is not 1/3, 3.14 is not pi); see the module
    docstring for the default's tolerance rule."""
    return compare(pred, gold, strict=strict).correct


def partial_credit(pred, gold, *, strict: bool = False) -> float:
    """Credit in [0, 1] for an extracted answer against the gold answer. Never raises.

    1 when equal. Otherwise, for real numbers p and gold g, with rel = |p - g| / |g| (|p| if g = 0):

        credit = 0.1 [parsed, right kind] + 0.1 [same sign] + 0.7 / (1 + 10 rel)

    which falls monotonically with the relative error and stays below 0.9 for any wrong number, so
    no wrong answer earns full credit. Tuples and sets of the right size: 0.1 + 0.8 x (share of
    elements that match), below 0.9 unless all match, which is equality. Answers of another kind
    (a list for a number: hedging) and expressions that differ earn 0.1 at most; nothing extracted
    or unparseable earns 0.
    """
    return compare(pred, gold, strict=strict).credit


def compare(pred, gold, *, strict: bool = False) -> Grade:
    """Equality and partial credit in one bounded call; failures become a reason, not an exception."""
    extracted = pred if isinstance(pred, str) or pred is None else None
    if pred is None or (isinstance(pred, str) and not pred.strip()):
        return Grade(extracted, False, 0.0, "nothing extracted")
    token = _STRICT.set(bool(strict))
    try:
        return _compare(pred, gold, extracted)
    finally:
        _STRICT.reset(token)


def _same_text(pred, gold) -> bool:
    """The same answer written identically (spacing and `$` aside): equal even when we cannot parse
    it (f(2) < f(1) < f(4), 12:00). Sound: identical text is the identical answer."""
    if not (isinstance(pred, str) and isinstance(gold, str)):
        return False
    a, b = (re.sub(r"\s+|\$|\\[,;! ]", "", x.strip().rstrip(".")) for x in (pred, gold))
    return bool(a) and a == b


def _compare(pred, gold, extracted) -> Grade:
    try:
        with _time_limit(TIME_LIMIT_S):
            g = _as_answer(gold)
            try:
                p = _as_answer(pred)
            except TooLarge as error:
                return Grade(extracted, False, 0.0, f"too large: {error}")
            except (ParseError, GradingTimeout, ArithmeticError) as error:
                if _same_text(pred, gold):
                    return Grade(extracted, True, 1.0, "identical text")
                return Grade(extracted, False, 0.0, f"unparseable answer: {error}")
            if _answers_equal(p, g):
                return Grade(extracted, True, 1.0, "equal")
            return Grade(extracted, False, _near_miss_credit(p, g), "not equal")
    except (ParseError, GradingTimeout, ArithmeticError) as error:
        if not isinstance(error, (TooLarge, GradingTimeout)) and _same_text(pred, gold):
            return Grade(extracted, True, 1.0, "identical text")
        return Grade(extracted, False, 0.0, f"gold answer problem: {error}")
    except Exception as error:  # a grader bug must not crash training; the reason says what broke
        return Grade(extracted, False, 0.0, f"grader error: {type(error).__name__}: {error}")


def _near_miss_credit(p: Answer, g: Answer) -> float:
    if p.kind == g.kind == "number":
        return _number_credit(p.items[0].value, g.items[0].value)
    if p.kind == g.kind and p.kind in ("tuple", "set") and len(p.items) == len(g.items):
        if p.kind == "tuple":
            matches = sum(_elements_equal(x, y) for x, y in zip(p.items, g.items))
        else:
            matches = sum(any(_elements_equal(x, y) for y in g.items) for x in p.items)
        return min(0.1 + 0.8 * matches / len(g.items), 0.89)
    if p.kind == g.kind or {p.kind, g.kind} <= {"tuple", "interval"}:
        return 0.1
    return 0.0


def _number_credit(p: sympy.Expr, g: sympy.Expr) -> float:
    try:
        pf, gf = complex(sympy.N(p, 30)), complex(sympy.N(g, 30))
    except (TypeError, ValueError, OverflowError):
        return 0.1
    if pf.imag or gf.imag or not all(map(math.isfinite, (pf.real, gf.real))):
        return 0.1
    pv, gv = pf.real, gf.real
    rel = abs(pv - gv) / abs(gv) if gv else abs(pv)
    same_sign = (pv > 0) == (gv > 0) and (pv == 0) == (gv == 0)
    return min(0.1 + 0.1 * same_sign + 0.7 / (1 + 10 * rel), 0.89)


def grade(completion: str | None, gold, *, strict: bool = False) -> Grade:
    """Extract the final answer from a completion and compare it with the gold answer
    (strict=True: exact values need exact answers, see `answers_equal`)."""
    try:
        extracted = extract_answer(completion)
    except Exception as error:  # extraction is regex work on bounded text; never crash training
        return Grade(None, False, 0.0, f"extraction error: {error}")
    result = compare(extracted, gold, strict=strict)
    return Grade(extracted, result.correct, result.credit, result.reason)


# A number as stated: 1,234 / -5 / 3.25 / 5/2 / \frac{5}{2}.
_STATED_NUMBER = re.compile(r"-?\\[dt]?frac\{\d+\}\{\d+\}|(?<![\d.])-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")


def answer_position(text: str) -> int:
    """Character index in `text` where its final answer's number begins.

    The number inside the extracted final answer (`36 + 32 = 68` -> the `68`), else the last number
    in the text, else the end of the text without trailing space. `text[:answer_position(text)]` is
    the model's own lead-in to its answer, after which a dense reward forces the gold answer.
    """
    if not text:
        return 0
    extracted = extract_answer(text)
    if extracted:
        at = text.rfind(extracted)
        numbers = list(_STATED_NUMBER.finditer(extracted)) if at >= 0 else []
        if numbers:
            return at + numbers[-1].start()
    numbers = list(_STATED_NUMBER.finditer(text))
    return numbers[-1].start() if numbers else len(text.rstrip())
