"""Grading: extraction, safe parsing, equivalence, partial credit, bounds. 150+ hand-written cases."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprompt_math.grading import (answer_is_complete, answers_equal, compare, extract_answer, grade, parse_answer,
                                   partial_credit)

# (completion text, the answer it must be graded equal to)
EXTRACT_EQUAL = [
    ("The answer is 68.", "68"), ("36 + 32 = 68", "68"), ("so \\boxed{\\frac{1}{2}}", "1/2"),
    ("\\boxed{\\boxed{3}}", "3"), ("#### 1,234", "1234"), ("Final answer: $1,234.50 dollars.", "1234.5"),
    ("The answer is 1\\,234", "1234"), ("The answer is 1 234 apples", "1234"), ("Answer: −5", "-5"),
    ("The answer is 25%.", "25"), ("The answer is 25%.", "0.25"), ("3.2e5", "320000"),
    ("The answer is $3.2\\times 10^{5}$.", "320000"), ("The answer is 5. Wait, actually the answer is 6.", "6"),
    ("\\boxed{5} or \\boxed{6}", "\\{5,6\\}"), ("x = 3", "3"), ("The answer is 2\\frac{1}{4}", "9/4"),
    ("2 1/4", "9/4"), ("0.\\overline{63}", "7/11"), ("0.333\\ldots", "1/3"), ("0.333...", "1/3"),
    ("\\boxed{(1, 2]}", "(1,2]"), ("\\boxed{\\{1,2\\}}", "\\{2,1\\}"), ("pi", "\\pi"), ("π/2", "\\frac{\\pi}{2}"),
    ("sqrt(8)", "2\\sqrt{2}"), ("\\boxed{x^2+2x+1}", "(x+1)^2"), ("The answer is 90^\\circ", "90"),
    ("\\boxed{\\left( 3, 4 \\right)}", "(3,4)"), ("\\boxed{\\text{5 apples}}", "5"),
    ("\\boxed{2\\sqrt[3]{2}}", "\\sqrt[3]{16}"), ("I get 70 but it is 68", "68"),
    ("She has 12 apples left.", "12"), ("Total: $45", "45"), ("It costs €30.", "30"), ("£7.50", "7.5"),
    ("The final answer is 1,000,000.", "1000000"), ("So the answer is -17", "-17"),
    ("Therefore, the answer is \\(\\frac{3}{4}\\).", "0.75"), ("The answer is $\\dfrac{5}{2}$", "2.5"),
    ("The answer is \\tfrac{1}{3}", "1/3"), ("Answer: 7 cm", "7"), ("The answer is 3 hours.", "3"),
    ("x = \\frac{-b}{2}", "-b/2"), ("#### 72", "72"), ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
    ("The answer is 12.0", "12"), ("The answer is 0.5", "\\frac12"), ("\\boxed{-\\frac{1}{2}}", "-0.5"),
    ("\\boxed{\\sqrt{2}}", "sqrt(2)"), ("\\boxed{2\\pi}", "2pi"), ("\\boxed{\\pi r^2}", "r^2 \\pi"),
    ("\\boxed{[0, \\infty)}", "[0,\\infty)"), ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)"),
    ("The answer is 3.14", "\\pi"), ("The answer is 0.33", "1/3"), ("The answer is 0.167", "1/6"),
    ("Answer: 1.5e-3", "0.0015"), ("The answer is 6 × 10^3", "6000"), ("The answer is 4·5", "20"),
    ("The answer is 12 ÷ 4", "3"), ("The answer is 50%", "1/2"), ("\\boxed{75\\%}", "75"),
    ("\\boxed{\\$18}", "18"), ("The answer is $ 1,234 $.", "1234"), ("y = 2x + 1", "2x+1"),
    ("\\boxed{1, 2, 3}", "\\{3,2,1\\}"), ("\\boxed{(1, 2, 3)}", "(1,2,3)"), ("The answer is: 9", "9"),
    ("Final Answer: The final answer is $42$. I hope it is correct.", "42"),
    ("The answer is \\boxed{10}. Actually no: \\boxed{12}", "12"), ("answer: 0", "0"),
    ("\\boxed{0.\\overline{3}}", "1/3"), ("\\boxed{0.1\\overline{6}}", "1/6"), ("0.1666...", "1/6"),
    ("0.142857142857...", "1/7"), ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}"), ("\\boxed{\\frac{\\sqrt{3}}{2}}", "sqrt(3)/2"),
    ("\\boxed{1\\frac{1}{2}}", "3/2"), ("\\boxed{3\\tfrac{3}{4}}", "15/4"), ("The answer is 1 1/2 cups", "1.5"),
    ("\\boxed{x=5}", "5"), ("\\boxed{-3}", "-3"), ("\\boxed{ 8 }", "8"), ("√16", "4"),
    ("The answer is 2^{10}", "1024"), ("\\boxed{10^{-3}}", "0.001"), ("\\boxed{\\left[1, 2\\right]}", "[1,2]"),
    ("The answer is 1,234.5.", "1234.5"), ("So she needs 15 more dollars.", "15"), ("120 minutes", "120"),
]

# (prediction, gold) pairs that must compare equal
EQUAL = [
    ("68", "68"), ("1/2", "0.5"), ("0.50", "1/2"), ("\\frac{2}{4}", "1/2"), ("2\\frac{1}{4}", "2.25"),
    ("2 1/4", "\\frac{9}{4}"), ("-5", "−5"), ("1,234", "1234"), ("1\\,234", "1234"), ("3.2e5", "320000"),
    ("3.2\\times 10^{5}", "320000"), ("0.\\overline{63}", "\\frac{7}{11}"), ("0.333\\ldots", "\\frac{1}{3}"),
    ("x = 3", "3"), ("3", "x=3"), ("\\{1, 2\\}", "\\{2, 1\\}"), ("(1, 2]", "(1,2]"), ("[1, 2]", "[1,2]"),
    ("(1,2)", "(1,2)"), ("\\pi", "pi"), ("π", "\\pi"), ("\\sqrt{8}", "2\\sqrt{2}"), ("sqrt(2)/2", "1/\\sqrt{2}"),
    ("\\frac{\\pi}{4}", "pi/4"), ("x^2-1", "(x-1)(x+1)"), ("2x", "x+x"), ("45^\\circ", "45"),
    ("\\text{5}", "5"), ("\\left(2, 3\\right)", "(2,3)"), ("10\\%", "0.1"), ("10%", "10"),
    ("1e3", "1000"), ("1/2^{31}", "2^{-31}"), ("123456", "123456.0"), ("\\dfrac{3}{6}", "\\tfrac{1}{2}"),
    ("3.14", "\\pi"), ("1.41", "\\sqrt{2}"), ("0.67", "2/3"), ("-0.25", "-\\frac14"), ("+7", "7"),
    ("007", "7"), ("5.0", "5"), ("\\sqrt[3]{27}", "3"), ("4^{1/2}", "2"), ("(-2)^3", "-8"),
]

# (prediction, gold) pairs that must NOT compare equal
NOT_EQUAL = [
    ("123457", "123456"), ("1/2^31", "1/2^30"), ("0.3", "1/3"), ("3", "\\pi"), ("(1, 2]", "[1, 2]"),
    ("(1, 2)", "(2, 1)"), ("[1,2)", "[1,2]"), ("\\{1,2\\}", "\\{1,2,3\\}"), ("5, 6", "5"), ("-5", "5"),
    ("0.5", "0.05"), ("1000", "100"), ("x+1", "x-1"), ("2x", "2y"), ("\\sqrt{2}", "1.4"),
    ("0.333", "1/3000"), ("3.1", "\\pi"), ("0.17", "1/6"), ("68", "86"), ("1,234", "1.234"), ("25%", "2.5"), ("2\\frac{1}{4}", "1/2"),
    ("1e5", "1e6"), ("\\pi", "22/7"), ("3.15", "\\pi"), ("(3,4)", "(4,3)"), ("x = 4", "3"), ("0", "1"),
    ("999999999999999999999", "1000000000000000000000"), ("2^{100}", "2^{100}+1"), ("abc", "5"),
]

# Issue 15: an unclosed \\boxed{ is malformed LaTeX, so no final answer ("\\boxed{1" used to grade as 1).
NOT_EXTRACTED = ["", "   ", "I don't know.", "no numbers here", None, "\\boxed{}", "\\boxed{1",
                 "The answer is \\boxed{\\frac{1}{2}"]

ADVERSARIAL = [
    "__import__('os').system('echo pwned')", "eval('1+1')", "exec(\"import os\")", "lambda: 1",
    "\\boxed{__import__('os')}", "().__class__.__bases__[0].__subclasses__()", "open('/etc/passwd').read()",
    "\\boxed{9^{9^{9^{9}}}}", "\\boxed{\\frac{7^{7^{7^{7}}-2}-3}{4}}", "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}",
    "\\boxed{\\sqrt{10^{10^{10}}}}", "(((((((((((((((((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))))))))))))))))",
    "\\boxed{{{{{", "}}}}", "\\frac{1}{0}", "\\boxed{1/0}", "x^{10^{6}}", "(x+1)^{100000}", "1e999999",
    "\\boxed{\\frac{\\frac{\\frac{1}{2}}{3}", "0^0", "\\sqrt{-1}", "\\boxed{\\infty}", "%%%%", "$$$$",
]


@pytest.mark.parametrize("text,gold", EXTRACT_EQUAL)
def test_extract_and_grade_equal(text, gold):
    result = grade(text, gold)
    assert result.correct, result
    assert result.credit == 1.0


@pytest.mark.parametrize("pred,gold", EQUAL)
def test_equal(pred, gold):
    assert answers_equal(pred, gold), compare(pred, gold)
    assert partial_credit(pred, gold) == 1.0


@pytest.mark.parametrize("pred,gold", NOT_EQUAL)
def test_not_equal(pred, gold):
    assert not answers_equal(pred, gold)
    assert 0.0 <= partial_credit(pred, gold) < 0.9


@pytest.mark.parametrize("text", NOT_EXTRACTED)
def test_nothing_extracted_gets_zero(text):
    result = grade(text, "5")
    assert not result.correct and result.credit == 0.0


def test_two_different_final_answers_are_not_correct():
    for text in ["\\boxed{5} or \\boxed{6}", "\\boxed{5}, \\boxed{6}", "The answer is 5 or 6."]:
        assert not grade(text, "5").correct
        assert not grade(text, "6").correct
    assert grade("\\boxed{5} and later \\boxed{5}", "5").correct


def test_extraction_order():
    assert extract_answer("Answer: 3. \\boxed{4}") == "4"           # boxed beats phrases
    assert extract_answer("The answer is 3.\n#### 4") == "4"        # #### beats phrases
    assert extract_answer("The answer is 7 and I used 12 steps") == "7"
    assert extract_answer("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"


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


@pytest.mark.parametrize("text, complete", [
    ("14 + 19 = 33\n", True),                       # a direct answer as the first line
    ("14 + 19 = 33.\n\n", True),
    ("The answer is 6.\n", True),
    ("Let me think.\nSo the answer is 1,234.\n", True),
    ("Answer: $12.50\n", True),
    ("\\boxed{7}\n", True),
    ("Work.\n#### 42\n", True),
    ("14 + 19 = 33", False),                        # no line break yet: the number may go on
    ("First, add 7 and 13.\n", False),              # setting up, no answer
    ("To solve it:\n3 * 4 = 12\n", False),          # an intermediate step, not the first line
    ("The answer is\n", False),
    ("2 + 3 = 5. Now\n", False),
    ("", False),
])
def test_answer_is_complete(text, complete):
    assert answer_is_complete(text) is complete


# ---------------------------------------------------------------------------------------------
# Issue 15: soundness first, equations, inequalities, rewrites, words, prose, strict mode
# ---------------------------------------------------------------------------------------------

ISSUE15_EQUAL = [
    ("2x - y + 1 = 0", "y = 2x + 1"), ("y = -\\frac{1}{2}x + \\frac{3}{4}", "2x + 4y - 3 = 0"),
    ("x \\le 3", "(-\\infty, 3]"), ("x > 5", "(5, \\infty)"), ("-x > -1", "x < 1"), ("5 \\geq x", "x \\le 5"),
    ("-2 \\le x \\le 7", "[-2, 7]"), ("x \\in [-2, 7]", "[-2, 7]"),
    ("[-1, 0) \\cup (0, 1]", "[-1, 0) \\cup (0, 1]"), ("2\\sin x\\cos x", "\\sin(2x)"),
    ("\\sec^2(y)", "\\tan^2(y)+1"), ("\\text{Evelyn}", "Evelyn"), ("\\text{ odd }", "Odd"),
    ("1 \\pm \\sqrt{19}", "\\{1 + \\sqrt{19}, 1 - \\sqrt{19}\\}"), ("(7,11), (11,7)", "(11,7) or (7,11)"),
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{bmatrix}1 & 2 \\\\ 3 & 4\\end{bmatrix}"),
]
ISSUE15_NOT_EQUAL = [
    ("x + y = 1", "x - y = 1"), ("2x + y = 3", "x + 2y = 3"), ("y = 2x + 1", "y = 2x - 1"), ("x = 3", "y = 3"),
    ("7 = 11a + c", "11a + c"), ("2x + z = 1", "1"), ("x < 3", "(-\\infty, 3]"), ("x \\le 3", "x \\ge 3"),
    ("\\sin x", "\\cos x"), ("2\\sin x\\cos x", "\\sin(x)"), ("\\text{odd}", "\\text{even}"), ("\\text{five}", "5"),
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}", "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}"),
    ("x \\le 3", "y \\le 3"),
]


@pytest.mark.parametrize("pred,gold", ISSUE15_EQUAL)
def test_issue15_equal(pred, gold):
    assert answers_equal(pred, gold), compare(pred, gold)
    assert answers_equal(gold, pred), compare(gold, pred)


@pytest.mark.parametrize("pred,gold", ISSUE15_NOT_EQUAL)
def test_issue15_not_equal(pred, gold):
    assert not answers_equal(pred, gold), compare(pred, gold)
    assert not answers_equal(gold, pred), compare(gold, pred)


@pytest.mark.parametrize("text,expected", [
    ("So the probability is 5/12.", "5/12"), ("The circumference is 4π.", "4π"), ("It is 12 cm.", "12"),
    ("\\boxed{1} papers and \\boxed{2} bins", "1, 2"), ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5"),
    ("\\boxed{5} no, wait, it is \\boxed{6}", "6"), ("The answer is \\boxed{", None), ("\\boxed{\\frac{1}{2}", None),
])
def test_issue15_extraction(text, expected):
    assert extract_answer(text) == expected


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


# Issue 15, second pass: classes from Math-Verify's suite --------------------------------------

@pytest.mark.parametrize("text,gold,correct", [
    ("AZYUK2A", "2", False), ("Answer: AZYUK2A", "2", False), ("the code is B12", "12", False),
    ("so x_2 is it", "2", False), ("a 3x2 grid", "3", False), ("a 3x2 grid", "2", False),
    ("It is 12cm", "12", True), ("1,000.99m²", "1000.99", True), ("The answer is 7.", "7", True),
])
def test_no_number_out_of_a_word(text, gold, correct):
    """The last-number fallback must not pull a digit out of an alphanumeric word."""
    assert grade(text, gold).correct is correct


@given(st.text("ABCXYZxyz", min_size=1, max_size=4), st.integers(0, 99), st.text("ABCXYZ", min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_digits_inside_words_are_never_an_answer(before, n, after):
    assert not grade(f"The code is {before}{n}{after} today", str(n)).correct


@pytest.mark.parametrize("pred,gold,equal", [
    ("-2 \\\\le x \\\\le 7", "x \\in [-2,7]", True), ("\\\\left(\\\\frac{1}{5},\\\\frac{1}{6}\\\\right)", "(1/5, 1/6)", True),
    ("\\\\frac{\\\\pi}{2}", "\\frac{\\pi}{2}", True), ("\\\\frac{1}{5}", "\\frac{1}{6}", False),
    ("-2 \\\\le x \\\\le 7", "[-2, 8]", False), ("\\\\sqrt{2}", "2", False),
    ("\\begin{pmatrix}a \\\\b\\end{pmatrix}", "\\begin{pmatrix}a & b\\end{pmatrix}", False),
])
def test_doubled_backslashes(pred, gold, equal):
    """A command whose backslash was escaped twice (`\\\\le`) reads as the command, outside environments."""
    assert answers_equal(pred, gold) is equal
    assert answers_equal(gold, pred) is equal


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{200} then \\boxed{255}, so $10,455. Final Answer: The final answer is $10,455$. I hope it is correct.",
     "10,455"),
    ("\\boxed{5}. Final answer: it is clearly right", "5"), ("Final answer: \\boxed{5}", "5"),
    ("\\boxed{12 $ and $13 }. Final Answer: The final answer is \"$12 $ and $13 $\".", "12 $ and $13"),
])
def test_final_answer_statement_after_boxes(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("pred,gold,equal", [
    ("(2,12) \\cup (12,102)", "(2, 12) \\cup (12, 102)", True), ("(12,102)", "(12, 102)", True),
    ("(12,102)", "12102", False), ("1,234", "1234", True), ("[1,000]", "1000", False),
])
def test_bracketed_pair_is_not_a_thousands_number(pred, gold, equal):
    assert answers_equal(pred, gold) is equal and answers_equal(gold, pred) is equal


@pytest.mark.parametrize("pred,gold,equal", [
    # ratios of two numbers, and a named ratio or a ratio of segments on the left
    ("7:32", "S_{MBCN}:S=7:32", True), ("11:21", "V_{1}:V_{2}=11:21", True), ("1", "A:B=1", True),
    ("14:64", "7:32", True), ("7/32", "7:32", True), ("\\frac{1}{\\sqrt{6}}", "\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}", True),
    ("7:33", "7:32", False), ("32:7", "7:32", False), ("2", "A:B=1", False), ("\\frac{1}{6}", "\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}", False),
    # solution groups "p=5,q=2;p=7,q=2"
    ("(5,2),(7,2)", "p=5,q=2;p=7,q=2", True), ("(7,2),(5,2)", "p=5,q=2;p=7,q=2", True),
    ("(2,5),(2,7)", "p=5,q=2;p=7,q=2", False), ("(5,2)", "p=5,q=2;p=7,q=2", False), ("(5,2),(7,3)", "p=5,q=2;p=7,q=2", False),
    # absolute values and function values in inequalities
    ("z \\in \\left[-\\frac{3}{2}, -1\\right] \\cup \\left[1, \\frac{3}{2}\\right]", "1\\leq|z|\\leq \\frac{3}{2}", True),
    ("(-1,1)", "|x|<1", True), ("(-\\infty,-1) \\cup (1,\\infty)", "|x|>1", True), ("|-3|", "3", True), ("(0,1)", "0<f(x)<1", True),
    ("[1, 3/2]", "1\\leq|z|\\leq \\frac{3}{2}", False), ("[0,1]", "0<f(x)<1", False), ("|x|", "x", False),
    ("|2|", "-2", False), ("3", "|x|=3", False), ("(-1,1]", "|x|<1", False),
])
def test_ratios_groups_absolute_values(pred, gold, equal):
    assert answers_equal(pred, gold) is equal, compare(pred, gold)
    assert answers_equal(gold, pred) is equal, compare(gold, pred)


@pytest.mark.parametrize("text,expected", [
    ("$1$ and $2$ and $3$", "1, 2, 3"), ("$21,16$ or $11$", "21,16, 11"), ("We get $5$ or $6$.", "5, 6"),
    ("So $x$ is $5$", "5"),
])
def test_spans_joined_by_and_or(text, expected):
    assert extract_answer(text) == expected


@given(st.integers(-20, 20), st.integers(1, 20), st.integers(-20, 20), st.integers(1, 20))
@settings(max_examples=100, deadline=None)
def test_absolute_value_regions_iff_same(a, b, c, d):
    """|x| < b/1 against |x| < d: equal iff b == d; a ratio a:b equals c:d iff a*d == b*c."""
    assert answers_equal(f"|x| < {b}", f"|x| < {d}") == (b == d)
    assert answers_equal(f"{a}:{b}", f"{c}:{d}") == (a * d == b * c)


@pytest.mark.parametrize("text,expected", [
    ("\\($y_1 = \\boxed{-2(x - 1)^2 + 5} \\) and \\( y_2 = \\boxed{3(x + 2)^2 - 2} \\)", "-2(x - 1)^2 + 5, 3(x + 2)^2 - 2"),
    ("\\boxed{5} no, wait: x = \\boxed{6}", "6"), ("\\boxed{5}. So x = \\boxed{6}", "6"),
])
def test_labelled_boxes_side_by_side(text, expected):
    assert extract_answer(text) == expected


# Issue 15, third pass: classes from the MATH `is_equiv` tests (hendrycks/math) and NeMo-Skills' --------
# A bare last line in \dfrac / \tfrac / \left( \right) form was not read as math, and the last-number
# fallback then took its denominator or last digit: "\dfrac{1}{3}" graded as 3.

@pytest.mark.parametrize("text,gold,correct", [
    ("\\dfrac{1}{3}", "1/3", True), ("\\dfrac{1}{3}", "3", False),
    ("\\tfrac83", "\\frac{8}{3}", True), ("\\tfrac83", "3", False), ("\\tfrac83", "83", False),
    ("\\left(x-2\\right)\\left(x+2\\right)", "(x-2)(x+2)", True), ("\\left(x-2\\right)\\left(x+2\\right)", "2", False),
    ("\\tfrac{1}{2} +\\! \\frac1{72}", "\\frac{1}{2} + \\frac{1}{72}", True), ("\\tfrac{1}{2} +\\! \\frac1{72}", "72", False),
    ("so the value we want is \\dfrac{2}{5} here", "2/5", True), ("so the value we want is \\dfrac{2}{5} here", "5", False),
    ("2 \\cdot 3", "6", True), ("2 \\cdot 3", "3", False), ("See section 2 and the left side", "2", True),
    # doubly escaped (a raw-string gold such as MATH's test_dfrac): the whole line, not its last fraction
    ("\\\\dfrac{1}{2} +\\frac{1}{72}", "37/72", True), ("\\\\dfrac{1}{2} +\\frac{1}{72}", "1/72", False),
])
def test_bare_dfrac_and_left_right_lines(text, gold, correct):
    assert grade(text, gold).correct is correct


# Issue 15, fourth pass: classes from Math-Verify's suite where it was right ---------------------------
# Matrix arithmetic: a sum, multiple or product of matrices is the matrix it computes; before, only the
# last matrix was read, so "2M" and "M + M" were graded equal to M (a wrong answer graded right).
_M = "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}"
_N = "\\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}"


def _mat(*rows):
    return "\\begin{pmatrix}" + " \\\\ ".join(" & ".join(map(str, r)) for r in rows) + "\\end{pmatrix}"


@pytest.mark.parametrize("pred,gold,equal", [
    (f"{_M} + {_N}", _mat((6, 8), (10, 12)), True), (f"{_M} - {_N}", _mat((-4, -4), (-4, -4)), True),
    (f"2{_M}", _mat((2, 4), (6, 8)), True), (f"\\frac{{1}}{{2}} {_mat((2, 4), (6, 8))}", _M, True),
    (f"{_M}{_N}", _mat((19, 22), (43, 50)), True), (f"{_M} \\cdot {_N}", _mat((19, 22), (43, 50)), True),
    (f"{_M}^2", _mat((7, 10), (15, 22)), True), (f"A + B = {_mat((6, 8), (10, 12))}", _mat((6, 8), (10, 12)), True),
    (f"\\left({_M}\\right)", _M, True),
    # not equal: the operation is computed, never dropped; order of a product matters
    (f"2{_M}", _M, False), (f"{_M} + {_M}", _M, False), (f"{_M} + {_N}", _N, False), (f"{_M} - {_N}", _mat((6, 8), (10, 12)), False),
    (f"{_N}{_M}", _mat((19, 22), (43, 50)), False), (f"{_M}^2", _M, False), (f"x{_M}", _M, False),
    # refused (unparseable): a scalar added to a matrix, shapes that do not fit, an inverse
    (f"2\\begin{{vmatrix}}1 & 2 \\\\ 3 & 4\\end{{vmatrix}}", _mat((2, 4), (6, 8)), False),  # a determinant, not a matrix
    (f"{_M} + 1", _M, False), (f"{_M} + \\begin{{pmatrix}}1 \\\\ 2\\end{{pmatrix}}", _M, False), (f"{_M}^{{-1}}", _M, False),
])
def test_matrix_arithmetic(pred, gold, equal):
    assert answers_equal(pred, gold) is equal, compare(pred, gold)
    assert answers_equal(gold, pred) is equal, compare(gold, pred)


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


# Boxes separated by a rule of one repeated symbol ("++++++", "---") are side by side, as are doubly
# escaped boxes (`\\boxed{1}, \\boxed{2}`, whose first backslash used to count as text between them).
@pytest.mark.parametrize("text,expected", [
    ("$\\\\boxed{35 cm} ++++++ \\\\boxed{4}$", "35 cm, 4"), ("\\boxed{1} ---- \\boxed{2}", "1, 2"),
    ("\\\\boxed{1}, \\\\boxed{2}", "1, 2"), ("\\boxed{1} *** \\boxed{2}", "1, 2"),
    # not separators: a single operator, an equals sign, words in between
    ("\\boxed{2} + \\boxed{3}", "3"), ("\\boxed{2} ++ \\boxed{3}", "3"), ("\\boxed{2} = \\boxed{3}", "3"),
    ("\\boxed{5} ---- no wait ---- \\boxed{6}", "6"),
])
def test_boxes_separated_by_a_rule(text, expected):
    assert extract_answer(text) == expected


def test_boxes_separated_by_a_rule_grade_as_a_list():
    gold = extract_answer("$\\\\boxed{35 cm} ++++++ \\\\boxed{4}$")
    assert grade("${35 cm,4}$", gold).correct and grade("\\boxed{4, 35}", gold).correct
    for wrong in ("\\boxed{4}", "\\boxed{35}", "\\boxed{39}", "\\boxed{35, 5}", "\\boxed{35, 4, 1}"):
        assert not grade(wrong, gold).correct, wrong


# A chain of equalities states its last side; an unknown command in a middle side no longer makes the
# whole answer unparseable, unless something there breaks the chain (a word, relation, arrow, separator).
@pytest.mark.parametrize("pred,gold,equal", [
    ("$1 = \\zzz = x = 0$", "0", True), ("x = \\zzz = 3", "3", True), ("x = \\zzz = 3", "x = 3", True),
    ("x=\\zzz=y=\\frac{3}{4}", "0.75", True),
    ("$1 = \\zzz = x = 0$", "1", False), ("$1 = \\zzz = x = 0$", "5", False), ("x = \\zzz = 3", "4", False),
    ("x = \\zzz = 3", "y = 3", False), ("x = 1 \\implies y = 2", "2", False), ("x = 3 \\text{ or } \\zzz = 5", "5", False),
    ("a = 2 \\preceq b = 5", "5", False), ("x = 3 \\zzz{or} y = 5", "5", False), ("x = \\zzz", "3", False),
    ("\\zzz = 3 = 3", "3", False), ("x = \\zzz = \\yyy", "3", False), ("x = \\zzz{1 = 2} = 3", "3", False),
])
def test_equality_chain_with_an_unknown_middle(pred, gold, equal):
    assert answers_equal(pred, gold) is equal, compare(pred, gold)
    assert answers_equal(gold, pred) is equal, compare(gold, pred)


def test_equality_chain_keeps_the_size_guards():
    started = time.perf_counter()
    assert not answers_equal("x = \\zzz = 9^{9^{9^{9}}}", "1")
    assert compare("x = \\zzz = 9^{9^{9^{9}}}", "1").reason.startswith("too large")
    assert time.perf_counter() - started < 1.0
