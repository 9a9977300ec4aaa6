"""Normalisation: LaTeX and plain text rewritten into the whitelisted parser's small language."""

from __future__ import annotations

import re
from fractions import Fraction

import sympy

from .limits import MAX_ANSWER_CHARS, ParseError

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
