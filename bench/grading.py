"""Grading throughput and worst-case latency, and accuracy against Math-Verify on the same cases.

    python bench/grading.py

Runs every labelled case in tests/test_grading.py (equal and not-equal) plus the adversarial inputs,
prints cases/second, the slowest single call, and how many labelled cases each grader gets right.
Math-Verify is only measured when it is installed (`pip install math-verify`); it is not a dependency.
"""

import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_grading import ADVERSARIAL, EQUAL, EXTRACT_EQUAL, NOT_EQUAL  # noqa: E402

from rlprompt_math.grading import answers_equal, grade  # noqa: E402


def labelled():
    for text, gold in EXTRACT_EQUAL:
        yield "extract", text, gold, True
    for pred, gold in EQUAL:
        yield "equal", pred, gold, True
    for pred, gold in NOT_EQUAL:
        yield "not-equal", pred, gold, False


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


def main():
    cases = list(labelled())
    inputs = [(k, p, g) for k, p, g, _ in cases] + [("extract", a, "1") for a in ADVERSARIAL]
    worst, worst_case = 0.0, None
    start = time.perf_counter()
    for kind, pred, gold in inputs:
        t = time.perf_counter()
        ours(kind, pred, gold)
        el = time.perf_counter() - t
        if el > worst:
            worst, worst_case = el, pred
    total = time.perf_counter() - start
    print(f"rlprompt_math.grading: {len(inputs)} calls in {total:.2f} s = {len(inputs) / total:.0f} cases/s; "
          f"worst single call {worst * 1000:.1f} ms ({worst_case[:40]!r})")
    right = sum(ours(k, p, g) == label for k, p, g, label in cases)
    print(f"labelled cases right: ours {right}/{len(cases)}")
    try:
        import math_verify as _  # noqa: F401
    except ImportError:
        print("math-verify not installed: skipping the comparison")
        return
    mv_right, hangs, misses = 0, 0, []
    for kind, pred, gold, label in cases:
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
