"""Closed word answers: yes/no, true/false and a multiple-choice letter (A-E).

A gold answer of one of these kinds is graded by normalised text (case, punctuation, `$`, `**`,
`\\text{}`-like wrappers and the brackets of "(B)" ignored), not by the math parser, and the answer
is found in the completion with rules of its own, since the model states it in words: "No, 44 is
not prime." answers No; "Yes, 44 is divisible by 4." answers Yes; "The answer is (B)." answers B.

Conservative by design: a wrong answer earns no partial credit (a guess from two or five options
is right often by chance), an answer that states both options ("Yes. ... No.", "\\boxed{A}, \\boxed{B}")
is a hedge and never correct, and where no answer of the gold's kind is found nothing is extracted.
Only regular expressions over bounded text; nothing is evaluated.

Other word answers (`\\text{Evelyn}`, "odd", "no solution") stay with the answer model
(`answers._text_answer`): equal when their normalised words are equal.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .extract import _last_boxed_groups
from .limits import MAX_ANSWER_CHARS, MAX_TEXT_CHARS

KINDS = ("yes/no", "true/false", "choice")


class Word(NamedTuple):
    kind: str    # one of KINDS
    value: str   # "yes", "no", "true", "false", or a capital letter A-E; "yes|no" etc. for a hedge


_WRAPPER = re.compile(r"\\(?:text|textbf|textnormal|textit|textrm|textsf|mathrm|mathbf|mathit|mbox|emph)\s*\{([^{}]*)\}")
_NOISE = re.compile(r"\$|\\[()\[\]]|\*\*|__|`|\\[,;! ]|\\q?quad")
_VALUES = {"yes": "yes/no", "no": "yes/no", "true": "true/false", "false": "true/false"}
_CHOICE = re.compile(r"\(\s*([A-Ea-e])\s*\)|([A-E])\s*\)?")


def _plain(text: str) -> str:
    """`\\text{...}`-like wrappers unwrapped (nested ones too), `$`, `\\(`, `**` and LaTeX spacing removed."""
    for _ in range(4):
        text, n = _WRAPPER.subn(lambda m: m.group(1), text)
        if not n:
            break
    return _NOISE.sub(" ", text)


def classify(answer: str | None) -> Word | None:
    """The closed word answer that `answer` is as a whole (a gold answer, or an extracted one), or None.

    "No", "NO.", "\\text{Yes}", "**True**", "false!" are yes/no or true/false; "B", "(B)", "B)",
    "(b)", "\\textbf{(B)}" are the choice B (a lone lower-case letter is not: it is a variable)."""
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    text = _plain(answer).strip().rstrip(".!").strip()
    boxed = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", text, re.S)
    if boxed:
        text = _plain(boxed.group(1)).strip().rstrip(".!").strip()
    word = text.casefold()
    if word in _VALUES:
        return Word(_VALUES[word], word)
    choice = _CHOICE.fullmatch(text)
    if choice:
        return Word("choice", (choice.group(1) or choice.group(2)).upper())
    return None


def closed_gold(gold) -> Word | None:
    """The closed word answer a gold answer is, or None (then it is graded as math)."""
    return classify(gold) if isinstance(gold, str) else None


# What a stated answer looks like at the start of a text: the word, then no more letters.
_LEADING = {
    "yes/no": re.compile(r"\s*(yes|no)(?![A-Za-z0-9])", re.IGNORECASE),
    "true/false": re.compile(r"\s*(true|false)(?![A-Za-z0-9])", re.IGNORECASE),
    "choice": re.compile(r"\s*(?:\(\s*([A-Ea-e])\s*\)|([A-E])(?![A-Za-z0-9]))"),
}
_PHRASE = re.compile(r"(?:final\s+answer\s*(?:is|:)|answer\s*(?:is|:)|(?:option|choice)\s+is)\s*[:=]?\s*",
                     re.IGNORECASE)
# "No, 44 is not prime.": the word as a sentence of its own or the start of one, followed by
# punctuation or the end of a line (so "No prime divides 44" and "there is no solution" are not it).
_STATEMENT = {
    "yes/no": re.compile(r"(?:^|[.!?:;\n])[\s>*#-]*(yes|no)(?=[ \t]*(?:[,.!;:\n—–]|$))", re.IGNORECASE),
    "true/false": re.compile(r"(?:^|[.!?:;\n])[\s>*#-]*(true|false)(?=[ \t]*(?:[,.!;:\n—–]|$))"
                             r"|\b(?:is|are)\s+(true|false)(?=[ \t]*(?:[.!\n]|$))", re.IGNORECASE),
    # a line that is the choice itself: "(B)", "B", "B) 12", "(B) 12"
    "choice": re.compile(r"(?:^|\n)[ \t]*(?:\(\s*([A-Ea-e])\s*\)|([A-E])\)|([A-E])[ \t]*(?=\n|$))"),
}


def _agreed(kind: str, values: list[str]) -> Word | None:
    distinct = list(dict.fromkeys(v.upper() if kind == "choice" else v.casefold() for v in values))
    if not distinct:
        return None
    return Word(kind, "|".join(distinct))  # more than one value: a hedge, equal to no gold


def _leading(text: str, kind: str) -> Word | None:
    match = _LEADING[kind].match(_plain(text))
    if not match:
        return None
    value = next(g for g in match.groups() if g)
    return _agreed(kind, [value])


def find_word(text: str | None, kind: str) -> Word | None:
    """The answer of `kind` (one of KINDS) that a completion states, or None.

    In order: the whole text is the answer ("No", "(B)", "\\boxed{B}"); else the last `\\boxed{}`
    (boxes side by side must agree; a box that holds no answer of this kind means the model answered
    something else: None); else the last `#### ...` line; else the last "The answer is ...",
    "Answer: ...", "Final answer: ...", "The correct option is ..." that starts with such a word;
    else the statements that start a sentence ("No, 44 is not prime.", "True.", "... is false.", a
    line "(B)"), which must agree."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text[-MAX_TEXT_CHARS:]
    whole = classify(text)
    if whole is not None:
        return whole if whole.kind == kind else None
    groups = _last_boxed_groups(text)
    if groups:
        words = [classify(c) or _leading(c, kind) for c in groups[-1]]
        if any(w is None or w.kind != kind for w in words):
            return None
        return _agreed(kind, [v for w in words for v in w.value.split("|")])
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        word = classify(hashes[-1]) or _leading(hashes[-1], kind)
        return word if word is not None and word.kind == kind else None
    for match in reversed(list(_PHRASE.finditer(text))):
        word = _leading(text[match.end():match.end() + 200], kind)
        if word is not None:
            return word
    values = [next(g for g in m.groups() if g) for m in _STATEMENT[kind].finditer(_plain(text))]
    return _agreed(kind, values)
