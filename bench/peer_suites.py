"""Peer graders' own test cases, run through our extractor and comparer.

    python bench/peer_suites.py            # every case with our verdict; disagreements marked

Each case is a gold text, a prediction text and the verdict the peer's tests expect. Both texts are
free text in the peer's convention (usually `$...$`), so both go through our extraction: the gold's
final answer is `extract_answer(gold)` when the gold has a `\\boxed{}`, else the gold text itself;
the prediction is graded with `grade(pred, gold_answer)`, exactly as a completion is in training.
The peer's per-test options (float rounding, match types) are not ours to honour: our rules are
fixed and documented in rlprompt_math/grading/, so a case that depends on such an option can only
agree by chance and is explained in the README.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlprompt_math.grading import extract_answer, grade

DATA = Path(__file__).resolve().parent / "data"
SUITES = {"Math-Verify": DATA / "math_verify_cases.jsonl",
          "MATH is_equiv (hendrycks/math)": DATA / "hendrycks_math_cases.jsonl",
          "NeMo-Skills math_equal": DATA / "nemo_skills_cases.jsonl"}


def load_cases(path: Path) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    header = rows[0] if rows and rows[0].get("header") else {}
    return header, [r for r in rows if not r.get("header")]


def gold_answer(gold: str) -> str:
    return extract_answer(gold) or gold


def our_verdict(case: dict) -> bool:
    return grade(case["pred"], gold_answer(case["gold"])).correct


def agreement(path: Path) -> tuple[int, list[tuple[dict, bool]]]:
    """(number of cases, [(case, our verdict) for every disagreement])."""
    _, cases = load_cases(path)
    disagreements = []
    for case in cases:
        verdict = our_verdict(case)
        if verdict != case["expected"]:
            disagreements.append((case, verdict))
    return len(cases), disagreements


def main() -> None:
    for name, path in SUITES.items():
        total, disagreements = agreement(path)
        wrong_right = sum(ours and not case["expected"] for case, ours in disagreements)
        print(f"{name}: agree on {total - len(disagreements)}/{total}; "
              f"we grade correct where they say wrong: {wrong_right}")
        for case, ours in disagreements:
            print(f"  {case['source']}: gold {case['gold'][:60]!r} pred {case['pred'][:60]!r} "
                  f"expected {case['expected']} ours {ours} (extracted {grade(case['pred'], '0').extracted!r})")


if __name__ == "__main__":
    main()
