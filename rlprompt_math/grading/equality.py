"""Equality of two parsed answers (the `compare`, `answers_equal` and `grade` verdict).

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

from contextvars import ContextVar

import sympy

from .answers import Answer
from .parse import Num

RELATIVE_TOLERANCE = 1e-2    # for an inexact decimal; see the module docstring

# strict=True for the `compare` call in progress: exact values need exact answers
_STRICT: ContextVar[bool] = ContextVar("strict", default=False)


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
