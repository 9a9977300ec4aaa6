"""Grades: `compare`, `answers_equal`, `partial_credit` and `grade` (extract, then compare), bounded
and never raising, with partial credit for near misses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import sympy

from .answers import Answer, parse_answer
from .equality import _STRICT, _answers_equal, _elements_equal
from .extract import extract_answer
from .limits import TIME_LIMIT_S, GradingTimeout, ParseError, TooLarge, _time_limit
from .words import Word, closed_gold, find_word


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

    strict=True: exact values need exact answers (0.33 is not 1/3, 3.14 is not pi); see `equality`'s
    module docstring for the default's tolerance rule."""
    return compare(pred, gold, strict=strict).correct


def partial_credit(pred, gold, *, strict: bool = False) -> float:
    """Credit in [0, 1] for an extracted answer against the gold answer. Never raises.

    1 when equal. Otherwise, for real numbers p and gold g, with rel = |p - g| / |g| (|p| if g = 0):

        credit = 0.1 [parsed, right kind] + 0.1 [same sign] + 0.7 / (1 + 10 rel)

    which falls monotonically with the relative error and stays below 0.9 for any wrong number, so
    no wrong answer earns full credit. Tuples and sets of the right size: 0.1 + 0.8 x (share of
    elements that match), below 0.9 unless all match, which is equality. Answers of another kind
    (a list for a number: hedging) and expressions that differ earn 0.1 at most; nothing extracted
    or unparseable earns 0. A gold yes/no, true/false or choice letter (`words`): 1 or 0, no partial
    credit (a wrong pick from a few options is right often by chance).
    """
    return compare(pred, gold, strict=strict).credit


def compare(pred, gold, *, strict: bool = False) -> Grade:
    """Equality and partial credit in one bounded call; failures become a reason, not an exception."""
    extracted = pred if isinstance(pred, str) or pred is None else None
    if pred is None or (isinstance(pred, str) and not pred.strip()):
        return Grade(extracted, False, 0.0, "nothing extracted")
    word = closed_gold(gold)
    if word is not None:
        return _word_grade(extracted, find_word(pred, word.kind) if isinstance(pred, str) else None, word)
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


def _word_grade(extracted: str | None, found: Word | None, gold: Word) -> Grade:
    """A closed word answer (yes/no, true/false, a choice letter) against the gold one: 1 or 0."""
    if found is None:
        return Grade(extracted, False, 0.0, f"no {gold.kind} answer found")
    if "|" in found.value:
        return Grade(extracted, False, 0.0, f"{gold.kind} answers that disagree: {found.value}")
    if found.value == gold.value:
        return Grade(extracted, True, 1.0, "equal")
    return Grade(extracted, False, 0.0, "not equal")


def grade(completion: str | None, gold, *, strict: bool = False) -> Grade:
    """Extract the final answer from a completion and compare it with the gold answer
    (strict=True: exact values need exact answers, see `answers_equal`). A gold yes/no, true/false
    or choice letter is found in the completion by `words.find_word` ("No, 44 is not prime.")."""
    word = closed_gold(gold)
    if word is not None:
        try:
            found = find_word(completion, word.kind)
        except Exception as error:  # regex work on bounded text; never crash training
            return Grade(None, False, 0.0, f"extraction error: {error}")
        extracted = found.value if found is not None else None
        return _word_grade(extracted, found, word)
    try:
        extracted = extract_answer(completion)
    except Exception as error:  # extraction is regex work on bounded text; never crash training
        return Grade(None, False, 0.0, f"extraction error: {error}")
    result = compare(extracted, gold, strict=strict)
    return Grade(extracted, result.correct, result.credit, result.reason)
