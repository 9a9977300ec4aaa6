"""Turn a peer grader's own test cases into data: bench/data/math_verify_cases.jsonl.

    git clone https://github.com/huggingface/Math-Verify   # Apache-2.0
    python bench/extract_peer_cases.py path/to/Math-Verify > bench/data/math_verify_cases.jsonl

Reads the test files with `ast` (nothing of theirs is imported or run): every
`@pytest.mark.parametrize` list whose argument names include gold, pred and an expected verdict
becomes one JSON line per case with the gold text, the prediction text, the expected verdict, the
options the test passes to Math-Verify (match types, float rounding, strict, set-relation
comparison) and where it came from (file, test function, index). Only the data is kept; none of
Math-Verify's code is copied. The first line is a header crediting the source and its licence.
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
        tree = ast.parse((repo / rel).read_text())
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


def main(repo: str) -> None:
    path = Path(repo)
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    rows = list(cases(path))
    print(json.dumps({"header": True, "source": "https://github.com/huggingface/Math-Verify", "commit": commit,
                      "licence": "Apache-2.0 (Copyright The HuggingFace Team); test cases used as data only",
                      "files": FILES, "cases": len(rows),
                      "extracted_by": "python bench/extract_peer_cases.py <Math-Verify checkout>"}))
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
