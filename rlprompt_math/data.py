"""Problems: records, loaders (through Hugging Face `datasets`), the offline generator, splits.

Formats, detected from the columns (or forced with `fmt=`):
  gsm8k       `question`, `answer` whose last line is `#### N` (commas stripped)
  openmath    `problem`, `expected_answer` (OpenMathInstruct-2)
  math        `problem`, `solution` with the answer in the last `\\boxed{}`
  fields      any JSONL/CSV/Parquet with `question_field` / `answer_field` (answers read as text)
A source that is not a local file is tried as a hub dataset id (offline: from the cache only).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import json
import os
import random
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

from .config import GENERATOR_KINDS, DataConfig
from .grading import ParseError, extract_answer, parse_answer


class DataError(ValueError):
    """A dataset could not be read, or a row is malformed; the message names file and row."""


@dataclass(frozen=True)
class Problem:
    """One math problem with a known answer."""

    id: str
    question: str
    answer: str
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def kind(self) -> str | None:
        """The problem's kind where its source names one (the generator's kinds; a dataset's `--kind-field`)."""
        kind = self.extra.get("kind")
        return str(kind) if kind is not None else None


def problem_id(question: str) -> str:
    """A stable id from the question text: identical questions share an id (and so a split)."""
    return hashlib.sha1(question.strip().encode("utf-8")).hexdigest()[:12]


# =============================================================================================
# Loading
# =============================================================================================

_SUFFIX_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _detect_format(columns: Sequence[str], question_field, answer_field) -> str:
    cols = set(columns)
    if question_field or answer_field:
        return "fields"
    if {"problem", "expected_answer"} <= cols:
        return "openmath"
    if {"problem", "solution"} <= cols:
        return "math"
    if {"question", "answer"} <= cols:
        return "gsm8k_or_fields"
    raise DataError(f"cannot tell the dataset format from its columns {sorted(cols)}; pass "
                    "--question-field and --answer-field")


def _answer_from_row(fmt: str, row: dict, question_field: str, answer_field: str) -> tuple[str, str]:
    if fmt == "openmath":
        return row.get("problem"), row.get("expected_answer")
    if fmt == "math":
        solution = row.get("solution")
        return row.get("problem"), (extract_answer(solution) if solution and "\\boxed" in solution else None)
    question, answer = row.get(question_field), row.get(answer_field)
    if fmt in ("gsm8k", "gsm8k_or_fields") and isinstance(answer, str) and "####" in answer:
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    elif fmt == "gsm8k":
        answer = None  # a GSM8K row must end in '#### N'
    return question, answer


def _row_location(path: str, builder: str, index: int) -> str:
    if builder == "csv":
        return f"{path}:{index + 2}"  # line numbers count the header
    if builder == "json":
        return f"{path}:{index + 1}"
    return f"{path} row {index}"


def _check_utf8(path: Path) -> None:
    """A text dataset (JSONL, JSON, CSV) must be UTF-8: name the first line that is not, before `datasets` or
    `csv` stop at it with a UnicodeDecodeError. Not a bad row that --skip-bad-rows could skip: the file's
    encoding is wrong (or it is not text)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte 0x{line[error.start]:02x} at column "
                                f"{error.start + 1}); save the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def _check_json_lines(path: Path) -> None:
    """`datasets` reports a broken JSON line without its number; find it first."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg}, column {error.colno})") from None


def _open_dataset(source: str, split: str):
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        builder = _SUFFIX_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .csv or .parquet")
        kwargs = {}
        if builder in ("json", "csv"):
            _check_utf8(path)
        if builder == "json" and path.suffix.lower() == ".jsonl":
            _check_json_lines(path)
        if builder == "csv":
            with open(path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            # Every column as text: '007' and '1,234' must reach the grader as written.
            kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in header})
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        except Exception as error:
            raise DataError(f"{path}: could not be read as {builder}: {' '.join(str(error).split())}") from error
        return ds, str(path), builder
    if path.suffix.lower() in _SUFFIX_BUILDERS or source.startswith((".", "/", "~")):
        raise DataError(f"dataset file not found: {path}")
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " HF_HUB_OFFLINE is set: only cached datasets can be used." if offline else ""
        raise DataError(f"could not load hub dataset {source!r} (split {split!r}): {error}.{hint} "
                        "Pass a local .jsonl/.csv/.parquet file instead.") from error
    return ds, source, "hub"


# A question longer than this is refused as the dataset loads, before a model does (a 1 MB question asked the
# engine for a 176 GB attention mask); after the model loads, train.check_question_lengths holds each question
# to the model's own positions.
MAX_QUESTION_CHARS = 100_000


def load_problems(source: str, *, fmt: str = "auto", question_field: str | None = None,
                  answer_field: str | None = None, split: str = "train", skip_bad_rows: bool = False,
                  limit: int | None = None, kind_field: str | None = None) -> tuple[list[Problem], list[str]]:
    """Read problems from a file or hub dataset. Returns (problems, messages about skipped rows).
    `kind_field` names the column that holds each problem's kind (`Problem.kind`: per-kind tables, exemplar
    pools shared out by kind); a column named `kind` is read as one without it.

    A malformed row (missing field, empty answer, an answer the grader cannot parse) raises
    `DataError` naming the file and row, unless `skip_bad_rows`, which skips it and reports it.
    """
    ds, name, builder = _open_dataset(source, split)
    detected = fmt if fmt != "auto" else _detect_format(ds.column_names, question_field, answer_field)
    qf, af = question_field or "question", answer_field or "answer"
    if detected in ("fields", "gsm8k", "gsm8k_or_fields"):
        missing = [c for c in (qf, af) if c not in ds.column_names]
        if missing:
            raise DataError(f"{name}: no column(s) {missing}; columns are {ds.column_names}")
    if kind_field and kind_field not in ds.column_names:
        raise DataError(f"{name}: no column {kind_field!r} for --kind-field; columns are {ds.column_names}")
    problems, bad = [], []
    for index, row in enumerate(ds):
        if limit is not None and len(problems) >= limit:
            break
        question, answer = _answer_from_row(detected, row, qf, af)
        reason = None
        if not isinstance(question, str) or not question.strip():
            reason = "missing or empty question"
        elif len(question) > MAX_QUESTION_CHARS:
            reason = (f"question of {len(question):,} characters, more than {MAX_QUESTION_CHARS:,} (longer than "
                      "any model here takes)")
        elif answer is None or not str(answer).strip():
            reason = "missing or empty answer" + (" (no '#### N' line)" if detected == "gsm8k" else "")
        else:
            try:
                parse_answer(str(answer))
            except ParseError as error:
                reason = f"answer {str(answer)[:60]!r} cannot be parsed: {error}"
        if reason:
            message = f"{_row_location(name, builder, index)}: {reason}"
            if not skip_bad_rows:
                raise DataError(message + " (use --skip-bad-rows to skip such rows)")
            bad.append(message)
            continue
        extra = {k: v for k, v in row.items() if k not in (qf, af, "problem", "expected_answer", "solution")}
        if kind_field:
            extra["kind"] = row[kind_field]
        pid = str(row["id"]) if "id" in row and row["id"] is not None else problem_id(question)
        problems.append(Problem(pid, question.strip(), str(answer).strip(), f"{name}", extra))
    if not problems:
        raise DataError(f"{name}: no usable problems" + (f" ({len(bad)} bad rows skipped)" if bad else ""))
    return problems, bad


# =============================================================================================
# The built-in offline generator
# =============================================================================================

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kira",
         "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "cards", "shells", "coins"]


def _fmt(value: Fraction) -> str:
    """Exact answer text: integers as integers, terminating fractions as decimals, else a/b."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:
        digits = 0
        while (value * 10 ** digits).denominator != 1:
            digits += 1
        return f"{float(value):.{digits}f}"
    return f"{value.numerator}/{value.denominator}"


def _arithmetic(rng: random.Random, level: int):
    hi = (20, 100, 1000)[level - 1]
    op = rng.choice("+-*/")
    if op == "/":
        b = rng.randint(2, (12, 20, 40)[level - 1])
        q = rng.randint(2, hi // 4 + 2)
        a = b * q
        return f"What is {a}/{b}?", Fraction(a, b)
    a, b = rng.randint(2, hi), rng.randint(2, hi if op != "*" else (12, 50, 100)[level - 1])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a}{op}{b}?", Fraction(value)


def _order_of_operations(rng, level):
    hi = (10, 20, 50)[level - 1]
    a, b, c = (rng.randint(2, hi) for _ in range(3))
    form = rng.randrange(3)
    if form == 0:
        return f"What is {a} + {b} * {c}?", Fraction(a + b * c)
    if form == 1:
        return f"What is ({a} + {b}) * {c}?", Fraction((a + b) * c)
    return f"What is {a} * {b} - {c}?", Fraction(a * b - c)


def _fractions(rng, level):
    dens = (2, 3, 4, 5, 6, 8, 10, 12)[: (4, 6, 8)[level - 1]]
    x = Fraction(rng.randint(1, 9), rng.choice(dens))
    y = Fraction(rng.randint(1, 9), rng.choice(dens))
    op = rng.choice("+-*")
    value = {"+": x + y, "-": x - y, "*": x * y}[op]
    return f"What is {x.numerator}/{x.denominator} {op} {y.numerator}/{y.denominator}?", value


def _decimals(rng, level):
    places = level
    x = Fraction(rng.randint(1, 10 ** (places + 1)), 10 ** places)
    y = Fraction(rng.randint(1, 10 ** (places + 1)), 10 ** places)
    op = rng.choice("+-")
    value = x + y if op == "+" else x - y
    return f"What is {_fmt(x)} {op} {_fmt(y)}?", value


def _percentages(rng, level):
    pct = rng.choice((10, 20, 25, 50, 75) if level == 1 else (5, 10, 12, 15, 20, 25, 30, 40, 60, 75))
    base = rng.randint(1, (10, 40, 200)[level - 1]) * 20
    return f"What is {pct}% of {base}?", Fraction(pct * base, 100)


def _word_one_step(rng, level):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, (20, 60, 300)[level - 1]), rng.randint(2, (20, 60, 300)[level - 1])
    form = rng.randrange(4)
    if form == 0:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", Fraction(a + b)
    if form == 1:
        a, b = max(a, b), min(a, b)
        return f"{name} had {a} {item} and gave away {b}. How many {item} are left?", Fraction(a - b)
    if form == 2:
        k = rng.randint(2, 12)
        return f"{name} buys {k} boxes with {b} {item} in each box. How many {item} is that in total?", Fraction(k * b)
    k = rng.randint(2, 10)
    return f"{name} shares {k * b} {item} equally among {k} friends. How many {item} does each friend get?", Fraction(b)


def _word_two_step(rng, level):
    name, other, item = rng.choice(NAMES), rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = (rng.randint(2, (15, 40, 150)[level - 1]) for _ in range(3))
    form = rng.randrange(3)
    if form == 0:
        return (f"{name} has {a} {item}. {other} gives {name} {b} more, then {name} loses {min(c, a + b)}. "
                f"How many {item} does {name} have?", Fraction(a + b - min(c, a + b)))
    if form == 1:
        k = rng.randint(2, 9)
        return (f"A pack holds {a} {item}. {name} buys {k} packs and already had {b}. "
                f"How many {item} does {name} have in total?", Fraction(k * a + b))
    price = rng.randint(2, 20)
    k = rng.randint(2, 9)
    money = price * k + rng.randint(0, 50)
    return (f"{name} has ${money} and buys {k} {item} at ${price} each. How many dollars are left?",
            Fraction(money - price * k))


def _linear_equation(rng, level):
    x = rng.randint(-10 if level > 1 else 1, (10, 20, 50)[level - 1])
    a = rng.choice([k for k in range(-9 if level == 3 else 2, 10) if k not in (0, 1)])
    b = rng.randint(-30, 30)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    return f"Solve for x: {a}x {sign} {abs(b)} = {c}.", Fraction(x)


def _powers_roots(rng, level):
    """Integer powers and exact roots, as math datasets write them (`3^4`, `(-2)^3`, "the square root of 144")."""
    form = rng.randrange(3)
    if form == 0:
        exponent = rng.choice((2, 2, 3, 4, 5)[: (3, 4, 5)[level - 1]])
        base = rng.randint(2, {2: (20, 30, 50), 3: (10, 12, 15), 4: (6, 8, 10), 5: (4, 5, 6)}[exponent][level - 1])
        if rng.randrange(4) == 0:
            base = -base
            return f"What is ({base})^{exponent}?", Fraction(base ** exponent)
        return f"What is {base}^{exponent}?", Fraction(base ** exponent)
    if form == 1:
        root = rng.randint(2, (30, 60, 120)[level - 1])
        return f"What is the square root of {root * root}?", Fraction(root)
    root = rng.randint(2, (10, 15, 25)[level - 1])
    return f"What is the cube root of {root ** 3}?", Fraction(root)


def _remainders(rng, level):
    divisor = rng.randint(3, (9, 15, 30)[level - 1])
    dividend = rng.randint(divisor + 1, (60, 300, 2000)[level - 1])
    phrase = rng.choice(("What is the remainder when {a} is divided by {b}?",
                         "Calculate the remainder when {a} is divided by {b}."))
    return phrase.format(a=dividend, b=divisor), Fraction(dividend % divisor)


def _absolute_values(rng, level):
    hi = (20, 60, 200)[level - 1]
    a, b = rng.randint(-hi, hi), rng.randint(1, hi)
    if rng.randrange(2):
        return f"What is |{a} - {b}|?", Fraction(abs(a - b))
    return f"What is the absolute value of {a - b}?", Fraction(abs(a - b))


def _factorials(rng, level):
    n = rng.randint(3, (7, 9, 12)[level - 1])
    form = rng.randrange(3)
    if form == 0:
        return f"What is {n}!?", Fraction(math.factorial(n))
    if form == 1:
        k = rng.randint(1, n - 1)
        return f"What is {n}!/{k}!?", Fraction(math.factorial(n) // math.factorial(k))
    m, c = rng.randint(2, 5), rng.randint(2, (20, 50, 100)[level - 1])
    return f"What is {m}! + {c}?", Fraction(math.factorial(m) + c)


def _gcd_lcm(rng, level):
    common = rng.randint(2, (6, 12, 25)[level - 1])
    a, b = (common * rng.randint(1, (8, 12, 20)[level - 1]) for _ in range(2))
    if rng.randrange(2):
        phrase = rng.choice(("What is the greatest common divisor of {a} and {b}?",
                             "Calculate the highest common factor of {a} and {b}."))
        return phrase.format(a=a, b=b), Fraction(math.gcd(a, b))
    return f"What is the least common multiple of {a} and {b}?", Fraction(math.lcm(a, b))


GENERATORS = {"arithmetic": _arithmetic, "order_of_operations": _order_of_operations,
              "fractions": _fractions, "decimals": _decimals, "percentages": _percentages,
              "word_one_step": _word_one_step, "word_two_step": _word_two_step,
              "linear_equation": _linear_equation, "powers_roots": _powers_roots, "remainders": _remainders,
              "absolute_values": _absolute_values, "factorials": _factorials, "gcd_lcm": _gcd_lcm}
if tuple(GENERATORS) != GENERATOR_KINDS:
    raise ImportError(f"the generators {tuple(GENERATORS)} do not match config.GENERATOR_KINDS {GENERATOR_KINDS}")


def problem_stream(seed: int = 0, *, kinds: Sequence[str] | None = None,
                   difficulty: int | Sequence[int] = 1) -> Iterator[Problem]:
    """An endless, reproducible stream of generated problems with exactly computed answers."""
    kinds = list(kinds or GENERATOR_KINDS)
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown:
        raise DataError(f"unknown problem kind(s) {unknown}; choose from {', '.join(GENERATOR_KINDS)}")
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if any(level not in (1, 2, 3) for level in levels):
        raise DataError("difficulty must be 1, 2 or 3")
    rng = random.Random(seed)
    for _ in itertools.count():
        kind, level = rng.choice(kinds), rng.choice(levels)
        question, value = GENERATORS[kind](rng, level)
        yield Problem(problem_id(question), question, _fmt(value), f"generator:{kind}",
                      {"kind": kind, "difficulty": level})


MAX_DUPLICATES_IN_A_ROW = 10_000


def generate_problems(n: int, seed: int = 0, *, kinds=None, difficulty=1, unique: bool = True) -> list[Problem]:
    """`n` generated problems (distinct questions when `unique`), reproducible from `seed`.

    A small problem space (one kind at difficulty 1 has a few hundred distinct questions) cannot give
    `n` distinct ones: after MAX_DUPLICATES_IN_A_ROW repeats in a row this stops with a DataError
    that says how many it found, rather than drawing for ever.
    """
    out, seen, repeats = [], set(), 0
    for problem in problem_stream(seed, kinds=kinds, difficulty=difficulty):
        if unique and problem.id in seen:
            repeats += 1
            if repeats >= MAX_DUPLICATES_IN_A_ROW:
                raise DataError(f"the generator found only {len(out)} distinct problems for kinds {kinds or 'all'} "
                                f"at difficulty {difficulty} ({n} asked); ask for fewer (--num-problems) "
                                "or add kinds or difficulty levels")
            continue
        repeats = 0
        seen.add(problem.id)
        out.append(problem)
        if len(out) >= n:
            return out
    return out


# =============================================================================================
# Splits
# =============================================================================================

SPLITS = ("train", "validation", "test")


def split_of(pid: str, seed: int, fractions=(0.8, 0.1, 0.1)) -> str:
    """The split a problem id belongs to: a hash of (seed, id), so it never changes with order."""
    h = int(hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()[:12], 16) / 16 ** 12
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if h < edge:
            return name
    return SPLITS[-1]


def split_problems(problems: Sequence[Problem], seed: int = 0,
                   fractions=(0.8, 0.1, 0.1)) -> dict[str, list[Problem]]:
    if abs(sum(fractions) - 1) > 1e-9 or len(fractions) != 3:
        raise ValueError("fractions must be three numbers summing to 1")
    out = {name: [] for name in SPLITS}
    for problem in problems:
        out[split_of(problem.id, seed, fractions)].append(problem)
    return out


def write_split_manifest(path: Path, splits: dict[str, list[Problem]], seed: int) -> None:
    """Record which problem ids went to which split, in the run directory."""
    manifest = {"seed": seed, "splits": {k: [p.id for p in v] for k, v in splits.items()}}
    Path(path).write_text(json.dumps(manifest, indent=1))


def problems_from_config(data: DataConfig, seed: int = 0
                         ) -> tuple[list[Problem], dict[str, list[Problem]], list[str]]:
    """The problems and splits that data settings describe, with `seed` for the generator and the split.

    Returns (problems, splits, messages about skipped rows); the same settings give the same splits.
    """
    bad: list[str] = []
    if data.dataset == "generator":
        kinds = list(GENERATOR_KINDS) if data.kinds == "all" else [k.strip() for k in str(data.kinds).split(",") if k.strip()]
        levels = [int(x) for x in str(data.difficulty).split(",") if x.strip()]
        problems = generate_problems(int(data.num_problems), seed=int(seed), kinds=kinds, difficulty=levels)
    else:
        problems, bad = load_problems(data.dataset, fmt=data.fmt, question_field=data.question_field,
                                      answer_field=data.answer_field, split=data.hub_split,
                                      skip_bad_rows=data.skip_bad_rows, kind_field=data.kind_field)
    return problems, split_problems(problems, seed=int(seed)), bad
