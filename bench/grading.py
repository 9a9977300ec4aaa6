"""Grading throughput and worst-case latency, agreement with peers' own test suites, soundness.

    python bench/grading.py

Prints: agreement with peers' own test cases (Math-Verify's, the MATH dataset's `is_equiv` tests and
NeMo-Skills' `math_equal` tests: bench/data/*_cases.jsonl, see bench/peer_suites.py) and every
disagreement; how many random pairs of *different* numbers, expressions and equations we grade equal
(must be 0); our labelled cases (tests/data/grading_*.jsonl, the ones tests/test_grading.py runs), in
all and per group; cases/second and the slowest single call over all of them plus the adversarial
inputs; and, when it is installed (`pip install math-verify`, not a dependency), Math-Verify on our
labelled cases.
"""

import multiprocessing as mp
import random
import time
from collections import Counter
from pathlib import Path

from peer_suites import SUITES, agreement, gold_answer, load_cases

from rlprompt_math.grading import answers_equal, grade

TEST_DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def _cases(name):
    return load_cases(TEST_DATA / name)[1]


ADVERSARIAL = [case["text"] for case in _cases("grading_adversarial.jsonl")]


def labelled():
    """(kind, prediction, gold, expected verdict, group) for every labelled case: a completion graded
    against a gold ("extract"), or two answers compared ("equal")."""
    for case in _cases("grading_completions.jsonl"):
        if case["completion"]:
            yield "extract", case["completion"], case["gold"], case["correct"], case["group"]
    for case in _cases("grading_equality.jsonl"):
        yield "equal", case["pred"], case["gold"], case["equal"], case["group"]


def random_different_pairs(n=300, seed=0):
    """Pairs that are mathematically different: numbers, polynomials, linear equations in two variables."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        kind = len(pairs) % 3
        if kind == 0:
            a, b = (f"{rng.randint(-99, 99)}/{rng.randint(1, 30)}" for _ in range(2))
            if eval_fraction(a) != eval_fraction(b):
                pairs.append((a, b))
        elif kind == 1:
            ca, cb = ([rng.randint(-5, 5) for _ in range(4)] for _ in range(2))
            if ca != cb:
                pairs.append(tuple("+".join(f"({c})*x^{i}" for i, c in enumerate(cs)) for cs in (ca, cb)))
        else:
            (a, b, c), (d, e, f) = ([rng.randint(-6, 6) for _ in range(3)] for _ in range(2))
            if (a, b) != (0, 0) and (d, e) != (0, 0) and not _proportional((a, b, c), (d, e, f)):
                pairs.append((f"{a}x + {b}y = {c}", f"{d}x + {e}y = {f}"))
    return pairs


def eval_fraction(text):
    from fractions import Fraction
    return Fraction(text)


def _proportional(u, v):
    return all(u[i] * v[j] == u[j] * v[i] for i in range(3) for j in range(3))


def ours(kind, pred, gold):
    return grade(pred, gold).correct if kind == "extract" else answers_equal(pred, gold)


def _math_verify_worker(kind, pred, gold, queue):
    from math_verify import parse, verify

    text = pred if kind == "extract" else f"${pred}$"
    queue.put(bool(verify(parse(f"${gold}$"), parse(text))))


def math_verify(kind, pred, gold, timeout=5.0):
    """Math-Verify in a killable subprocess: its own timeout does not stop big-integer work."""
    queue = mp.Queue()
    proc = mp.Process(target=_math_verify_worker, args=(kind, pred, gold, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return None
    return queue.get() if not queue.empty() else False


def peer_suites():
    for name, path in SUITES.items():
        start = time.perf_counter()
        total, disagreements = agreement(path)
        elapsed = time.perf_counter() - start
        wrong_right = sum(ours and not case["expected"] for case, ours in disagreements)
        print(f"{name} suite: agree on {total - len(disagreements)}/{total} "
              f"({100 * (total - len(disagreements)) / total:.1f}%) in {elapsed:.1f} s; "
              f"graded correct where they expect wrong: {wrong_right}")
        for case, ours in disagreements:
            print(f"  {case['source']}: ours {'equal' if ours else 'not equal'}, theirs "
                  f"{'equal' if case['expected'] else 'not equal'}: pred {case['pred'][-70:]!r} "
                  f"gold {gold_answer(case['gold'])!r}")


def main():
    peer_suites()
    pairs = random_different_pairs()
    wrong = [(a, b) for a, b in pairs if answers_equal(a, b) or answers_equal(b, a)]
    print(f"random different pairs (numbers, polynomials, linear equations) graded equal: {len(wrong)}/{len(pairs)}"
          + "".join(f"\n  {a!r} vs {b!r}" for a, b in wrong))
    cases = list(labelled())
    peer = [("extract", c["pred"], gold_answer(c["gold"])) for path in SUITES.values() for c in load_cases(path)[1]]
    inputs = [(k, p, g) for k, p, g, _, _ in cases] + [("extract", a, "1") for a in ADVERSARIAL] + peer
    worst, worst_case = 0.0, None
    start = time.perf_counter()
    for kind, pred, gold in inputs:
        t = time.perf_counter()
        ours(kind, pred, gold)
        el = time.perf_counter() - t
        if el > worst:
            worst, worst_case = el, pred
    total = time.perf_counter() - start
    print(f"rlprompt_math.grading (labelled + adversarial + peer-suite inputs): {len(inputs)} calls in {total:.2f} s = {len(inputs) / total:.0f} cases/s; "
          f"worst single call {worst * 1000:.1f} ms ({worst_case[:40]!r})")
    verdicts = [ours(k, p, g) == label for k, p, g, label, _ in cases]
    print(f"labelled cases right: ours {sum(verdicts)}/{len(cases)}")
    totals, rights = Counter(c[4] for c in cases), Counter(c[4] for c, ok in zip(cases, verdicts) if ok)
    for group, total in totals.items():
        print(f"  {group}: {rights[group]}/{total}")
    for (k, p, g, label, _), ok in zip(cases, verdicts):
        if not ok:
            print(f"  ours wrong: {p!r} vs {g!r}")
    try:
        import math_verify as _  # noqa: F401
    except ImportError:
        print("math-verify not installed: skipping the comparison")
        return
    mv_right, hangs, misses = 0, 0, []
    for kind, pred, gold, label, _ in cases:
        result = math_verify(kind, pred, gold)
        hangs += result is None
        if result == label:
            mv_right += 1
        else:
            misses.append((pred, gold, label))
    print(f"labelled cases right: math-verify {mv_right}/{len(cases)}")
    for pred, gold, label in misses:
        print(f"  math-verify wrong: {pred!r} vs {gold!r} (should be {'equal' if label else 'not equal'})")
    adv_hang = sum(math_verify("extract", a, "1") is None for a in ADVERSARIAL)
    print(f"math-verify calls over 5 s (killed): {hangs} labelled, {adv_hang}/{len(ADVERSARIAL)} adversarial")


if __name__ == "__main__":
    main()
