"""Extraction: the final answer stated in free model text, whether a text has stated it yet, and
where its number begins."""

from __future__ import annotations

import re

from .limits import MAX_DEPTH, MAX_TEXT_CHARS
from .parse import _NAME

_NUMBER = r"[-−]?\$?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?%?|[-−]?\.\d+%?"
_ANSWER_PHRASES = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is|answer\s*:|answer\s+is)\s*[:=]?\s*",
    re.IGNORECASE)


_FINAL_PHRASE = re.compile(r"final\s+answer\s*(?:is|:)\s*[:=]?\s*", re.IGNORECASE)


def _brace_close(text: str, i: int) -> int | None:
    """Just past the `}` that closes a brace group opened right before `i`, or None where it never closes."""
    depth = 1
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return None if depth else i


def _last_boxed_groups(text: str) -> list[list[str]]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}`, brace-matched, grouped when side by side."""
    groups: list[list[str]] = []
    last_end = -10**9
    pattern = re.compile(r"\\(?:boxed|fbox)\s*\{")
    match = pattern.search(text)
    while match:
        start = match.end()
        i = _brace_close(text, start)
        if i is None:  # unbalanced: ignore this box
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
    return any(_brace_close(text, position + match.end()) is None
               for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text[position:]))


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
    joined = _join_thousands(text)
    numbers = list(_FALLBACK_NUMBER.finditer(joined))
    if numbers:
        start, end = _power_span(joined, numbers[-1].start(), numbers[-1].end())
        return joined[start:end].rstrip(".,")
    return None


_EXPONENT_BEFORE = re.compile(r"(?<![A-Za-z_\d.\\])(\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?)?[A-Za-z])\s*(?:\^|\*\*)\s*(\{\s*)?$")
_EXPONENT_AFTER = re.compile(r"\s*(?:\^|\*\*)\s*(?:(\{)|[-+]?\d+(?:\.\d+)?)")


def _power_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen the span of a number to the whole power it is the base or an exponent of: the last
    number of "10^{10^{10}}" is the tower, never its base or exponent alone (a tower too large to
    compute is then refused, as it is in a box or a phrase, instead of graded as 10; "4x^2" is not 2).
    Bases: a number or a letter ("4x"); exponents in braces are brace-matched, plain ones a number."""
    for _ in range(MAX_DEPTH):
        window = max(0, start - 200)
        before = _EXPONENT_BEFORE.search(text[window:start])
        if before:  # the number is an exponent: take the base (and the brace group it sits in)
            start = window + before.start(1)
            if before.group(2):
                closed = _brace_close(text, end)
                if closed is None:
                    return start, end
                end = closed
            continue
        after = _EXPONENT_AFTER.match(text, end)
        if not after:
            return start, end
        if after.group(1):  # the number is a base with a braced exponent
            closed = _brace_close(text, after.end())
            if closed is None:
                return start, end
            end = closed
        else:
            end = after.end()
    return start, end


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
