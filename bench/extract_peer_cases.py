"""Turn peer graders' own test cases into data under bench/data/.

    python bench/extract_peer_cases.py [PEER] <checkout or bare git dir> > bench/data/<file>

    PEER             repository (licence)                     file written
    math-verify      huggingface/Math-Verify (Apache-2.0)      math_verify_cases.jsonl   (the default)
    hendrycks-math   hendrycks/math (MIT)                      hendrycks_math_cases.jsonl
    nemo-skills      NVIDIA/NeMo-Skills (Apache-2.0)           nemo_skills_cases.jsonl

Reads the test files with `ast` (nothing of theirs is imported or run) and writes one JSON line per
case: the gold text, the prediction text, the expected verdict, the options the test passes to the
peer's grader (Math-Verify only: match types, float rounding, strict, set-relation comparison) and
where it came from (file, test function, index). Only the data is kept; none of the peers' code is
copied. The first line is a header crediting the source, its commit and its licence.

* Math-Verify: every `@pytest.mark.parametrize` list whose argument names include gold, pred and an
  expected verdict, and `assert compare_strings(gold, pred, ...) == v` written out in a test body.
* hendrycks-math: `modeling/math_equivalence_test.py`, the unit tests of the MATH dataset's
  `is_equiv` (the normaliser lm-evaluation-harness's `hendrycks_math` task uses): each test assigns
  `test_in` and `test_out` and asserts `is_equiv(test_in, test_out)` true or false. Their
  evaluation calls `is_equiv(model_output, answer)`, so `test_in` is the prediction and `test_out`
  the gold.
* nemo-skills: `tests/test_math_equal.py`: `test_correct_examples` / `test_incorrect_examples`
  parametrize pairs and assert `math_equal(a, b)` and `math_equal(b, a)` both true (or both false),
  so each pair gives two cases, `[i]` (prediction a, gold b) and `[i]r` (prediction b, gold a).
  Non-string values (`5`, `5.0`, `5 / 2`) become the text Python prints for them (`2.5`); a pair
  with `None` on one side (no answer at all, not a text) is skipped and counted in the header.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

FILES = ["tests/test_all.py", "tests/test_boxed.py", "tests/test_numina_cases.py",
         "tests/test_open_thoughts.py", "tests/test_strict.py", "tests/test_yujianll.py"]
HENDRYCKS_FILE = "modeling/math_equivalence_test.py"
NEMO_FILE = "tests/test_math_equal.py"


def _read(repo: Path, rel: str) -> str:
    """A file of a checkout, or of the HEAD commit of a bare git directory."""
    if (repo / rel).exists():
        return (repo / rel).read_text()
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:{rel}"], capture_output=True,
                          text=True, check=True).stdout


def _literal(node: ast.AST):
    """ast.literal_eval, plus f-strings whose fields are constants or `math.<fn>(constants)`
    (test_float_precision builds its gold as f"{math.sqrt(17):.15f}"). Nothing is eval'ed."""
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(part.value)
                continue
            value = part.value
            if (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                    and ast.unparse(value.func.value) == "math"):
                value = getattr(math, value.func.attr)(*[_literal(a) for a in value.args])
            else:
                value = _literal(value)
            spec = _literal(part.format_spec) if part.format_spec is not None else ""
            out.append(format(value, spec))
        return "".join(out)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
            and all(isinstance(v, ast.Constant) and type(v.value) in (int, float) for v in (node.left, node.right))):
        return node.left.value / node.right.value      # NeMo-Skills writes `5 / 2`
    return ast.literal_eval(node)


def _direct_calls(func: ast.FunctionDef):
    """`assert compare_strings(gold, pred, ...) == 1` written out in a test body (test_precision)."""
    for node in ast.walk(func):
        if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Call)
                and ast.unparse(node.left.func) == "compare_strings" and len(node.left.args) >= 2):
            try:
                gold, pred = (_literal(a) for a in node.left.args[:2])
                expected = _literal(node.comparators[0])
            except ValueError:
                continue
            options = {kw.arg: _literal(kw.value) for kw in node.left.keywords}
            yield gold, pred, bool(expected), options


def _helper_options(func: ast.FunctionDef) -> dict:
    """The keyword arguments the test body passes to its compare helper (match_types, precision...)."""
    options = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("match_types", "precision", "strict", "allow_set_relation_comp"):
                    try:
                        options[kw.arg] = ast.literal_eval(kw.value)
                    except ValueError:
                        options[kw.arg] = f"<param:{ast.unparse(kw.value)}>"
    return options


def cases(repo: Path):
    for rel in FILES:
        tree = ast.parse(_read(repo, rel))
        for func in tree.body:
            if not isinstance(func, ast.FunctionDef):
                continue
            if not func.decorator_list:
                for index, (gold, pred, expected, options) in enumerate(_direct_calls(func)):
                    yield {"gold": gold, "pred": pred, "expected": expected, "options": options,
                           "source": f"{rel}::{func.name}[{index}]"}
            for deco in func.decorator_list:
                if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize")):
                    continue
                names = [n.strip() for n in ast.literal_eval(deco.args[0]).split(",")]
                if "gold" not in names or "pred" not in names:
                    continue
                verdict = next(n for n in ("expected", "result") if n in names)
                options = _helper_options(func)
                for index, row in enumerate(_literal(deco.args[1])):
                    values = dict(zip(names, row))
                    opts = {k: (values[v[7:-1]] if isinstance(v, str) and v.startswith("<param:") else v)
                            for k, v in options.items()}
                    for extra in ("precision", "strict", "allow_set_relation_comp"):
                        if extra in values:
                            opts[extra] = values[extra]
                    yield {"gold": values["gold"], "pred": values["pred"], "expected": bool(values[verdict]),
                           "options": opts, "source": f"{rel}::{func.name}[{index}]"}


def hendrycks_cases(repo: Path):
    tree = ast.parse(_read(repo, HENDRYCKS_FILE))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for func in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")):
            names = {}
            for node in func.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    names[node.targets[0].id] = _literal(node.value)
                call = node.value if isinstance(node, ast.Expr) else None
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in ("assertTrue", "assertFalse")):
                    inner = call.args[0]
                    if not (isinstance(inner, ast.Call) and ast.unparse(inner.func) == "is_equiv"):
                        continue
                    pred, gold = (names[a.id] if isinstance(a, ast.Name) else _literal(a) for a in inner.args[:2])
                    yield {"gold": gold, "pred": pred, "expected": call.func.attr == "assertTrue",
                           "options": {}, "source": f"{HENDRYCKS_FILE}::{cls.name}.{func.name}"}


def _as_text(value) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def nemo_cases(repo: Path, skipped: list):
    tree = ast.parse(_read(repo, NEMO_FILE))
    for func in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        verdicts = {node.comparators[0].value for node in ast.walk(func)
                    if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.Is)
                    and isinstance(node.comparators[0], ast.Constant)}
        if len(verdicts) != 1:
            continue
        expected = bool(verdicts.pop())
        for deco in func.decorator_list:
            if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize")):
                continue
            for index, pair in enumerate(_literal(deco.args[1])):
                a, b = (_as_text(v) for v in pair)
                if a is None or b is None:
                    skipped.append(f"{NEMO_FILE}::{func.name}[{index}] {pair!r}")
                    continue
                for suffix, (pred, gold) in (("", (a, b)), ("r", (b, a))):
                    yield {"gold": gold, "pred": pred, "expected": expected, "options": {},
                           "source": f"{NEMO_FILE}::{func.name}[{index}]{suffix}"}


PEERS = {
    "math-verify": ("https://github.com/huggingface/Math-Verify",
                    "Apache-2.0 (Copyright The HuggingFace Team); test cases used as data only", FILES),
    "hendrycks-math": ("https://github.com/hendrycks/math",
                       "MIT (Copyright (c) 2021 Dan Hendrycks); test cases used as data only", [HENDRYCKS_FILE]),
    "nemo-skills": ("https://github.com/NVIDIA/NeMo-Skills",
                    "Apache-2.0 (Copyright (c) 2024, NVIDIA CORPORATION); test cases used as data only", [NEMO_FILE]),
}


def main(argv: list[str]) -> None:
    peer, repo = (argv[0], argv[1]) if argv and argv[0] in PEERS else ("math-verify", argv[0] if argv else ".")
    path = Path(repo)
    try:
        commit = subprocess.run(["git", "--git-dir", repo, "rev-parse", "HEAD"] if not (path / ".git").exists()
                                else ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    skipped: list[str] = []
    rows = list({"math-verify": lambda: cases(path), "hendrycks-math": lambda: hendrycks_cases(path),
                 "nemo-skills": lambda: nemo_cases(path, skipped)}[peer]())
    source, licence, files = PEERS[peer]
    header = {"header": True, "source": source, "commit": commit, "licence": licence, "files": files,
              "cases": len(rows)}
    if skipped:
        header["skipped"] = skipped
    header["extracted_by"] = ("python bench/extract_peer_cases.py <Math-Verify checkout>" if peer == "math-verify"
                              else f"python bench/extract_peer_cases.py {peer} <checkout>")
    print(json.dumps(header))
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
    else:
        main(sys.argv[1:])
