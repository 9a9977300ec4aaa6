"""Limits on grading work, the errors grading raises, and the wall-clock backstop.

Every step (normalising, parsing, comparing) works under these bounds, so untrusted model text can
never make grading hang or exhaust memory.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

MAX_TEXT_CHARS = 50_000      # completions are scanned from their last 50k characters
MAX_ANSWER_CHARS = 400       # a final answer longer than this is not parsed
MAX_DEPTH = 40               # bracket / operator nesting
MAX_RESULT_BITS = 20_000     # a power whose result needs more bits than this is refused
MAX_SYMBOLIC_EXPONENT = 32   # x^n with variables: larger n is refused (expansion blows up)
TIME_LIMIT_S = 1.0           # wall-clock backstop for a grading call (main thread only)


class ParseError(ValueError):
    """The answer text is not a math answer this parser accepts."""


class TooLarge(ParseError):
    """Evaluating the answer would exceed the size limits."""


class GradingTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """A wall-clock backstop where signals work (the main thread). The size guards (parse.py) are
    what keep C-level big-integer work bounded; this only catches slow pure-Python sympy paths."""
    if threading.current_thread() is not threading.main_thread() or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def handler(signum, frame):
        raise GradingTimeout(f"grading took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
