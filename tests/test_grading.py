"""Grading: extraction, safe parsing, equivalence, partial credit, bounds.

The labelled cases are data shared with bench/grading.py: tests/data/grading_*.jsonl, one case a line
with its verdict, the group it belongs to and, where it has one, a note on what it guards.
"""

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprompt_math.grading import (answer_is_complete, answers_equal, compare, extract_answer, grade, parse_answer,
                                   partial_credit)

DATA = Path(__file__).resolve().parent / "data"


def _cases(name: str) -> list[dict]:
    """The cases in tests/data/<name>, one JSON object a line."""
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


COMPLETIONS = _cases("grading_completions.jsonl")          # grade(completion, gold).correct is `correct`
EQUALITY = _cases("grading_equality.jsonl")                # answers_equal(pred, gold), both ways, is `equal`
EXTRACTION = _cases("grading_extraction.jsonl")            # extract_answer(text) == `answer` (null: none)
ANSWER_COMPLETE = _cases("grading_answer_complete.jsonl")  # answer_is_complete(text) is `complete`
ADVERSARIAL = [case["text"] for case in _cases("grading_adversarial.jsonl")]


def _id(*texts) -> str:
    return "-".join(map(str, texts))


@pytest.mark.parametrize("case", COMPLETIONS, ids=lambda case: _id(case["completion"], case["gold"]))
def test_completion_graded(case):
    result = grade(case["completion"], case["gold"])
    assert result.correct is case["correct"], (case, result)
    if case["correct"]:
        assert result.credit == 1.0, (case, result)
    if "credit" in case:  # nothing extracted earns nothing
        assert result.credit == case["credit"], (case, result)


@pytest.mark.parametrize("case", EQUALITY, ids=lambda case: _id(case["pred"], case["gold"]))
def test_answers_equal(case):
    pred, gold, equal = case["pred"], case["gold"], case["equal"]
    assert answers_equal(pred, gold) is equal, compare(pred, gold)
    assert answers_equal(gold, pred) is equal, compare(gold, pred)
    if equal:
        assert partial_credit(pred, gold) == 1.0
    else:
        assert 0.0 <= partial_credit(pred, gold) < 0.9


@pytest.mark.parametrize("case", EXTRACTION, ids=lambda case: _id(case["text"]))
def test_extract_answer(case):
    assert extract_answer(case["text"]) == case["answer"], case


@pytest.mark.parametrize("case", ANSWER_COMPLETE, ids=lambda case: _id(case["text"]))
def test_answer_is_complete(case):
    assert answer_is_complete(case["text"]) is case["complete"], case


def test_two_different_final_answers_are_not_correct():
    for text in ["\\boxed{5} or \\boxed{6}", "\\boxed{5}, \\boxed{6}", "The answer is 5 or 6."]:
        assert not grade(text, "5").correct
        assert not grade(text, "6").correct
    assert grade("\\boxed{5} and later \\boxed{5}", "5").correct


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_inputs_are_bounded_and_never_raise(text):
    start = time.perf_counter()
    result = grade(text, "1")
    assert time.perf_counter() - start < 2.0
    assert result.credit <= 1.0 and isinstance(result.reason, str)


def test_expressions_in_code_are_not_evaluated():
    assert not grade("eval('1+1')", "2").correct
    assert not grade("The answer is __import__('math').factorial(3)", "6").correct


def test_code_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path('{marker}').write_text('x')"
    for text in (payload, f"\\boxed{{{payload}}}", f"The answer is {payload}"):
        grade(text, "1")
        compare(payload, payload)
    assert not marker.exists()


def test_huge_powers_are_refused_quickly():
    for text in ("9^{9^{9^{9}}}", "\\frac{7^{7^{7^{7}}-2}-3}{4}"):
        start = time.perf_counter()
        result = compare(text, "1")
        assert time.perf_counter() - start < 0.5
        assert not result.correct and "too large" in result.reason
        assert compare("1", text).reason.startswith("gold answer problem")


def test_100kb_completion():
    text = "blah 7 " * 15_000 + "The answer is 42."
    assert len(text) > 100_000
    start = time.perf_counter()
    assert grade(text, "42").correct
    assert time.perf_counter() - start < 2.0


def test_unbalanced_and_empty():
    assert extract_answer("\\boxed{3") is None
    assert not answers_equal("", "")
    assert compare("{", "1").reason.startswith("unparseable")


def test_parse_kinds():
    assert parse_answer("(1, 2]").kind == "interval"
    assert parse_answer("(1, 2)").kind == "tuple"
    assert parse_answer("\\{1, 2\\}").kind == "set"
    assert parse_answer("x^2").kind == "expr"
    assert parse_answer("7").kind == "number"


def test_partial_credit_formula():
    gold = "100"
    credits = [partial_credit(p, gold) for p in ["101", "110", "150", "300", "-100"]]
    assert credits == sorted(credits, reverse=True)  # monotone in relative error
    assert credits[0] < 0.9
    assert partial_credit("100", gold) == 1.0
    assert partial_credit("-100", gold) < partial_credit("300", gold)  # wrong sign costs
    assert partial_credit(None, gold) == 0.0
    assert partial_credit("100, 101, 99", gold) == 0.0  # hedging with a list earns nothing
    assert 0 < partial_credit("(1, 3)", "(1, 2)") < 0.9
    assert partial_credit("x", gold) == 0.0


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_text_never_raises(text):
    result = grade(text, "42")
    assert 0.0 <= result.credit <= 1.0


@given(st.one_of(st.integers(-10**12, 10**12).map(str),
                 st.fractions(max_denominator=10**6).map(str),
                 st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str)))
@settings(max_examples=300, deadline=None)
def test_number_equals_itself(s):
    assert answers_equal(s, s)


@given(st.integers(-10**9, 10**9), st.integers(-10**9, 10**9))
@settings(max_examples=200, deadline=None)
def test_equality_symmetric_on_numbers(a, b):
    assert answers_equal(str(a), str(b)) == answers_equal(str(b), str(a)) == (a == b)


@given(st.fractions(max_denominator=1000), st.fractions(max_denominator=1000))
@settings(max_examples=200, deadline=None)
def test_fraction_equality_symmetric(a, b):
    assert answers_equal(str(a), str(b)) == answers_equal(str(b), str(a)) == (a == b)


def test_strict_mode():
    for pred, gold in [("0.33", "1/3"), ("6.28", "2\\pi"), ("3.14", "\\pi"), ("1.41", "\\sqrt{2}")]:
        assert answers_equal(pred, gold)                      # default: a rounded decimal within 1%
        assert not answers_equal(pred, gold, strict=True)     # strict: exact values need exact answers
        assert not grade(f"The answer is {pred}", gold, strict=True).correct
    for pred, gold in [("0.5", "1/2"), ("2\\pi", "\\pi + \\pi"), ("1,234", "1234"), ("x=3", "3")]:
        assert answers_equal(pred, gold, strict=True)


_small = st.integers(-9, 9)


def _poly(coeffs):
    return "+".join(f"({c})*x^{i}" for i, c in enumerate(coeffs))


@given(st.lists(_small, min_size=1, max_size=5), st.lists(_small, min_size=1, max_size=5))
@settings(max_examples=150, deadline=None)
def test_different_polynomials_never_equal(a, b):
    pa, pb = a + [0] * (6 - len(a)), b + [0] * (6 - len(b))
    assert answers_equal(_poly(a), _poly(b)) == (pa == pb)


@given(st.lists(_small, min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_polynomial_equals_its_sympy_rewrites(coeffs):
    import sympy
    x = sympy.Symbol("x")
    poly = sum(c * x ** i for i, c in enumerate(coeffs))
    for rewritten in (sympy.expand(poly), sympy.factor(poly), sympy.horner(poly)):
        text = str(rewritten).replace("**", "^")
        assert answers_equal(text, _poly(coeffs)), (text, coeffs)


@given(_small, _small, _small, _small, _small, _small, st.integers(1, 5).map(lambda k: k * (-1) ** k))
@settings(max_examples=200, deadline=None)
def test_linear_equations_equal_iff_proportional(a, b, c, d, e, f, k):
    """a x + b y = c against d x + e y = f: equal exactly when one is a non-zero multiple of the other;
    a multiple (k times each side, moved across) is always equal."""
    if (a, b) == (0, 0) or (d, e) == (0, 0):
        return
    first = f"{a}x + {b}y = {c}"
    import sympy
    proportional = sympy.Matrix([[a, b, c], [d, e, f]]).rank() == 1
    assert answers_equal(first, f"{d}x + {e}y = {f}") == proportional
    assert answers_equal(first, f"{k * a}x + {k * b}y - {k * c} = 0")


@given(st.fractions(max_denominator=50), st.fractions(max_denominator=50))
@settings(max_examples=150, deadline=None)
def test_different_numbers_never_equal(a, b):
    assert answers_equal(str(a), str(b)) == (a == b)
    assert answers_equal(f"x = {a}", f"x = {b}") == (a == b)


@given(st.sampled_from(["<", "<=", ">", ">="]), st.sampled_from(["<", "<=", ">", ">="]), _small, _small)
@settings(max_examples=100, deadline=None)
def test_inequalities_equal_iff_same_set(op1, op2, a, b):
    assert answers_equal(f"x {op1} {a}", f"x {op2} {b}") == (op1 == op2 and a == b)


@given(st.text("ABCXYZxyz", min_size=1, max_size=4), st.integers(0, 99), st.text("ABCXYZ", min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_digits_inside_words_are_never_an_answer(before, n, after):
    assert not grade(f"The code is {before}{n}{after} today", str(n)).correct


@given(st.integers(-20, 20), st.integers(1, 20), st.integers(-20, 20), st.integers(1, 20))
@settings(max_examples=100, deadline=None)
def test_absolute_value_regions_iff_same(a, b, c, d):
    """|x| < b/1 against |x| < d: equal iff b == d; a ratio a:b equals c:d iff a*d == b*c."""
    assert answers_equal(f"|x| < {b}", f"|x| < {d}") == (b == d)
    assert answers_equal(f"{a}:{b}", f"{c}:{d}") == (a * d == b * c)


# Matrix arithmetic (the labelled cases are in grading_equality.jsonl): the bounds, and sums computed
# entry by entry.
_M = "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}"


def _mat(*rows):
    return "\\begin{pmatrix}" + " \\\\ ".join(" & ".join(map(str, r)) for r in rows) + "\\end{pmatrix}"


def test_matrix_arithmetic_is_bounded():
    """Products only of rational matrices, size-checked first, at most 8 in an answer: all refused fast."""
    big = "\\begin{pmatrix}3^{4000} & 7^{1400} \\\\ 3 & 5^{1000}\\end{pmatrix}"
    symbolic = "\\begin{pmatrix}(x+1)^{32} & x \\\\ 1 & x^{31}\\end{pmatrix}"
    irrational = "\\begin{pmatrix}\\sqrt{2}+\\pi & \\sqrt{3} \\\\ \\pi^2 & \\sqrt{5}+1\\end{pmatrix}"
    for text, reason in [(f"{big}^8", "too large"), (f"{_M}^8{_M}^8", "too large"), (f"{_M}^{{9}}", "unparseable"),
                         (f"{symbolic}^8", "unparseable"), (f"{irrational}^8", "unparseable"),
                         (f"{symbolic}{symbolic}", "unparseable")]:
        started = time.perf_counter()
        result = compare(text, _M)
        assert not result.correct and result.reason.startswith(reason), (text, result)
        assert time.perf_counter() - started < 1.0
    # sums and scalar multiples of symbolic or irrational matrices are still computed
    assert answers_equal(f"2{symbolic} - {symbolic}", symbolic)
    assert answers_equal(f"\\sqrt{{2}}{irrational} - \\sqrt{{2}}{irrational}", _mat((0, 0), (0, 0)))
    assert not answers_equal(f"2{symbolic}", symbolic)


@given(st.lists(st.integers(-5, 5), min_size=4, max_size=4), st.lists(st.integers(-5, 5), min_size=4, max_size=4),
       st.integers(-3, 3))
@settings(max_examples=60, deadline=None)
def test_matrix_sums_equal_iff_entries_equal(a, b, k):
    """k A + B is graded equal to a literal matrix exactly when every entry matches."""
    A, B = _mat(a[:2], a[2:]), _mat(b[:2], b[2:])
    right = [k * x + y for x, y in zip(a, b)]
    assert answers_equal(f"{k}{A} + {B}", _mat(right[:2], right[2:]))
    wrong = right[:3] + [right[3] + 1]
    assert not answers_equal(f"{k}{A} + {B}", _mat(wrong[:2], wrong[2:]))


# Boxes separated by a rule of one repeated symbol ("++++++", "---") are one answer, a list.
def test_boxes_separated_by_a_rule_grade_as_a_list():
    gold = extract_answer("$\\\\boxed{35 cm} ++++++ \\\\boxed{4}$")
    assert grade("${35 cm,4}$", gold).correct and grade("\\boxed{4, 35}", gold).correct
    for wrong in ("\\boxed{4}", "\\boxed{35}", "\\boxed{39}", "\\boxed{35, 5}", "\\boxed{35, 4, 1}"):
        assert not grade(wrong, gold).correct, wrong


# A chain of equalities whose unknown middle side is skipped still goes through the size guards.
def test_equality_chain_keeps_the_size_guards():
    started = time.perf_counter()
    assert not answers_equal("x = \\zzz = 9^{9^{9^{9}}}", "1")
    assert compare("x = \\zzz = 9^{9^{9^{9}}}", "1").reason.startswith("too large")
    assert time.perf_counter() - started < 1.0


# Issue 34: refused powers, a gold that stops at "=", closed word answers.

@given(st.integers(10, 99), st.integers(9, 99), st.sampled_from(["{}^{{{}^{{{}}}}}", "{}^{{{}^{{{}^{{{}}}}}}}"]),
       st.sampled_from(["", "so the value is ", "We get $", "It equals "]))
@settings(max_examples=60, deadline=None)
def test_a_refused_power_is_never_graded_as_its_base(base, exponent, form, lead):
    tower = form.format(base, exponent, exponent, exponent)
    for gold in (str(base), str(exponent)):
        result = grade(lead + tower + ("$" if "$" in lead else "."), gold)
        assert not result.correct and result.credit == 0.0 and "too large" in result.reason, (tower, gold, result)


def test_a_gold_answer_that_stops_at_equals_is_refused(tmp_path):
    from rlprompt_math.data import DataError, load_problems
    for gold in ("x =", "x=", "f(x) =", "y = "):
        with pytest.raises(ValueError, match="nothing after '='"):
            parse_answer(gold)
        path = tmp_path / "data.jsonl"
        path.write_text(json.dumps({"question": "Solve 2x = 6.", "answer": gold}) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"data\.jsonl.*nothing after '='"):
            load_problems(str(path))
    assert parse_answer("36 + 32 =").kind == "number"  # a computation states its value


def test_word_gold_answers_load_and_grade(tmp_path):
    from rlprompt_math.data import load_problems
    golds = ["No", "Yes", "True", "false", "(B)", "C", "\\text{(D)}", "\\text{Evelyn}", "\\textbf{No}"]
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"question": f"Question {i}?", "answer": g}) + "\n"
                            for i, g in enumerate(golds)), encoding="utf-8")
    problems, skipped = load_problems(str(path))
    assert [p.answer for p in problems] == golds and not skipped
    assert grade("No, 44 is not prime.", "No").correct
    assert grade("Yes, 44 is divisible by 4.", "No").credit == 0.0
    assert grade("The answer is (B).", "B").correct
    assert grade("Evelyn", "\\text{Evelyn}").extracted is None  # free word answers keep the math extractor
    assert grade("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}").correct


@given(st.text(max_size=300))
@settings(max_examples=150, deadline=None)
def test_word_grading_never_raises_and_is_all_or_nothing(text):
    for gold in ("No", "True", "B"):
        result = grade(text, gold)
        assert result.credit in (0.0, 1.0) and result.correct is (result.credit == 1.0)
