"""The whitelisted parser: tokens to sympy values, built by hand (no eval, no sympify), with a size
guard before every power so a huge exponent is refused before it is computed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import sympy

from .limits import MAX_DEPTH, MAX_RESULT_BITS, MAX_SYMBOLIC_EXPONENT, ParseError, TooLarge
from .latex import _FUNCTION_NAMES, _FUNCTIONS

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


def _parse_expression(s: str, names: dict | None = None) -> Num:
    tokens = _tokenize(s)
    if not tokens:
        raise ParseError("empty expression")
    parser = _Parser(tokens, names)
    value = parser.expr()
    if parser.i != len(tokens):
        raise ParseError(f"unexpected {parser.peek()[1]!r}")
    return value


# A variable name as the parser reads it: x, x_1, x_(ab)
_NAME = r"[a-zA-Z](?:_(?:\([a-zA-Z0-9]{1,8}\)|[a-zA-Z0-9]))?"
