"""The answer model: an extracted answer parsed into an `Answer` (number, expression, equation, tuple,
set, interval, inequality, matrix or word), including matrix arithmetic, inequality solution sets,
chains of equalities and groups of assignments."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy

from .limits import MAX_ANSWER_CHARS, MAX_RESULT_BITS, TIME_LIMIT_S, ParseError, TooLarge, _time_limit
from .latex import _FUNCTIONS, normalize
from .parse import _NAME, Num, _parse_expression
from .words import classify


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
    if not rhs and lhs:
        value = _parse_item(lhs)
        if value.kind != "number" or value.equation is not None:
            # "x =", "f(x) =", "2x + 1 =": the answer stops where its value should be
            raise ParseError(f"nothing after '=' in {s.strip()!r}")
        return value  # "36 + 32 =" states its computation
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
            word = classify(raw)  # "No", "Yes!", "B)", "\\textbf{(B)}": a closed word answer (grading.words)
            if word is not None:
                return Answer("text", text=word.value)
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
