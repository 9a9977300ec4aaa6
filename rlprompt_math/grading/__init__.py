"""Answer extraction, safe parsing, symbolic equivalence and partial credit.

Model output is untrusted text. Nothing here calls `eval`, `exec`, `sympify` or `parse_expr`: a
small recursive-descent parser accepts a whitelist of tokens (numbers, `+ - * / ^`, brackets,
`sqrt`, `pi`, single-letter variables) and builds sympy objects itself. Before any power is
computed its size is estimated, so `9^{9^{9^{9}}}` is refused in microseconds instead of hanging in
C big-integer code, where no timeout could stop it.

Why not latex2sympy2_extended / math-verify: latex2sympy2's grammar rejects `0.\\overline{63}`
and it evaluates powers with no size guard; Math-Verify misses thin-space thousands, scientific
notation, a Unicode minus, plain-text pi and two boxes side by side, and its timeout does not stop
big-integer work (see the tests for each case).

The equality rules are in `equality`'s docstring. Modules, each importing only those above it:

  limits     size and time limits, ParseError / TooLarge / GradingTimeout
  latex      LaTeX and plain text to the parser's small language
  parse      the whitelisted parser and its power-size guard (`Num`)
  extract    the final answer in free text (`extract_answer`, `answer_is_complete`, `answer_position`)
  words      closed word answers (yes/no, true/false, a choice letter): found in the model's phrasing, 1 or 0
  answers    the answer model (`Answer`, `parse_answer`): matrices, inequalities, chains of equalities
  equality   equality of two parsed answers
  credit     `Grade`, `compare`, `answers_equal`, `partial_credit`, `grade`
"""

from .answers import MAX_MATRICES, MAX_MATRIX_POWER, MAX_MATRIX_PRODUCTS, Answer, parse_answer
from .credit import Grade, answers_equal, compare, grade, partial_credit
from .equality import MAX_CANCEL_OPS, MAX_SIMPLIFY_OPS, RELATIVE_TOLERANCE
from .extract import answer_is_complete, answer_position, extract_answer
from .limits import (MAX_ANSWER_CHARS, MAX_DEPTH, MAX_RESULT_BITS, MAX_SYMBOLIC_EXPONENT, MAX_TEXT_CHARS, TIME_LIMIT_S,
                     GradingTimeout, ParseError, TooLarge)
from .latex import normalize
from .parse import Num

__all__ = [
    "Answer", "Grade", "GradingTimeout", "Num", "ParseError", "TooLarge",
    "answer_is_complete", "answer_position", "answers_equal", "compare", "extract_answer", "grade", "normalize",
    "parse_answer", "partial_credit",
    "MAX_ANSWER_CHARS", "MAX_CANCEL_OPS", "MAX_DEPTH", "MAX_MATRICES", "MAX_MATRIX_POWER", "MAX_MATRIX_PRODUCTS",
    "MAX_RESULT_BITS", "MAX_SIMPLIFY_OPS", "MAX_SYMBOLIC_EXPONENT", "MAX_TEXT_CHARS", "RELATIVE_TOLERANCE",
    "TIME_LIMIT_S",
]
