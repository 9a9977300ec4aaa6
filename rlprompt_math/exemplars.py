"""Worked examples for prompts: a pool of training problems and the forms their answers are written in.

A structured prompt shows the model a few solved problems before the question (`templates.Exemplar`,
rendered as earlier chat turns). Which problems, and how their answers are written, move accuracy by
tens of points on small models (issue 22: 7% to 42.5% on the default model), so both are learned.
The answer forms (`config.ANSWER_FORMS`):

  bare        the gold answer: `68`
  equation    `A op B = C`: the question's expression as written, " = ", the gold answer (`36+32 = 68`,
              `20% of 40 = 8`; "Solve for x: ..." gives `x = 2`). A question with no expression to copy
              (a word problem, GSM8K text) gets the bare answer.
  spaced      the equation with its operators spaced, `36 + 32 = 68`: how the default model writes its
              own answers when it states one (its unprompted completions); about 2 points above the
              unspaced equation on it, +2.0 (95% CI -2.1 to 6.4; bench/reports/2026-12-03-exemplars-by-default.md).
  completion  the model's own correct greedy completion of the question with no prompt, cut after its
              answer; where the model answers wrongly, the spaced form (`ExemplarPool.collect_completions`).

Exemplars never leak: a pool is drawn from the training split only, and `ExemplarPool.from_splits`
refuses a pool whose problem appears in validation or test (by id or by question text).
Nothing here evaluates a question's text: the expression is copied, never computed.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from .config import ANSWER_FORMS
from .data import Problem
from .grading import answer_position, grade
from .templates import Exemplar, Prompt

__all__ = ["ANSWER_FORMS", "ExemplarPool", "equation_form", "expression_of", "few_shot_reference",
           "reference_name", "spaced_form"]

# "What is 36+32?", "Compute (3 + 4) * 5.": the span after the lead-in, when it is only arithmetic.
_ASKED_EXPRESSION = re.compile(r"^\s*(?:what is|what's|compute|calculate|evaluate)\s+(?P<expr>.+?)\s*[?.]?\s*$",
                               re.IGNORECASE)
_ARITHMETIC = re.compile(r"[\d\s.,+\-*/×÷^()]+")
_OPERATOR = re.compile(r"\d\s*[-+*/×÷^]\s*\(?\s*-?\d")
# "20% of 40", "12.5 % of 80"
_PERCENT_OF = re.compile(r"-?\d+(?:\.\d+)?\s*%\s*of\s+-?\d+(?:\.\d+)?", re.IGNORECASE)
# a binary operator: one after a digit or a closing bracket (a minus after an operator is a sign)
_BINARY_OPERATOR = re.compile(r"(?<=[\d)])\s*([-+*/×÷^])\s*")
# "Solve for x: 3x + 4 = 10." -> the variable
_SOLVE_FOR = re.compile(r"^\s*solve for (?P<var>[a-zA-Z])\s*:", re.IGNORECASE)


def expression_of(question: str) -> str | None:
    """The arithmetic the question asks for, as written (`36+32`, `20% of 40`), or None (a word problem)."""
    asked = _ASKED_EXPRESSION.match(question)
    if not asked:
        return None
    expr = asked.group("expr")
    if _PERCENT_OF.fullmatch(expr):
        return expr
    if _ARITHMETIC.fullmatch(expr) and _OPERATOR.search(expr):
        return expr
    return None


def equation_form(question: str, answer: str, *, spaced: bool = False) -> str:
    """The answer as an equation: `36+32 = 68` (`36 + 32 = 68` when `spaced`), `x = 2`, else the bare answer."""
    solve = _SOLVE_FOR.match(question)
    if solve:
        return f"{solve.group('var')} = {answer}"
    expr = expression_of(question)
    if expr and spaced:
        expr = _BINARY_OPERATOR.sub(r" \1 ", expr)
    return f"{expr} = {answer}" if expr else answer


def spaced_form(question: str, answer: str) -> str:
    """The equation with its operators spaced, as the default model writes them: `36 + 32 = 68`, `6 - -3 = 9`."""
    return equation_form(question, answer, spaced=True)


def completion_cut(completion: str, gold: str) -> str | None:
    """`completion` up to the end of its final answer (`grading.answer_position`), or None where the
    completion does not reach `gold`. The cut keeps the whole answer token (`\\boxed{68}`, `7/8`)
    and drops trailing punctuation; where that no longer grades correct, the answer's whole line."""
    if not grade(completion, gold).correct:
        return None
    start = answer_position(completion)
    token = re.match(r"\S*", completion[start:]).group(0).rstrip(".,;:!?")
    candidates = [completion[:start] + token]
    line_end = completion.find("\n", start)
    candidates.append(completion if line_end < 0 else completion[:line_end])
    for text in candidates:
        text = text.strip()
        if text and grade(text, gold).correct:
            return text
    return completion.strip()


class ExemplarPool:
    """The training problems a prompt can show as exemplars, and each one's answer in every form.

    `forms_text` (form -> one answer text per problem) restores a saved pool exactly; the bare and
    equation forms are computed from the problems, the completion form needs `collect_completions`.
    """

    def __init__(self, problems: Sequence[Problem], forms_text: dict[str, Sequence[str]] | None = None):
        self.problems: list[Problem] = list(problems)
        if not self.problems:
            raise ValueError("an exemplar pool needs at least one problem")
        self.forms_text: dict[str, list[str]] = {
            "bare": [p.answer for p in self.problems],
            "equation": [equation_form(p.question, p.answer) for p in self.problems],
            "spaced": [spaced_form(p.question, p.answer) for p in self.problems]}
        for form, texts in (forms_text or {}).items():
            if form not in ANSWER_FORMS:
                raise ValueError(f"unknown answer form {form!r}; choose from {ANSWER_FORMS}")
            if len(texts) != len(self.problems):
                raise ValueError(f"{len(texts)} {form} answers for {len(self.problems)} pool problems")
            self.forms_text[form] = list(texts)

    @classmethod
    def from_splits(cls, train: Sequence[Problem], held_out: Sequence[Problem], size: int, seed: int = 0
                    ) -> "ExemplarPool":
        """`size` problems drawn (seeded) from the training split; `held_out` is validation + test. Where the
        problems name their kind (`Problem.kind`: the generator's, or a dataset's kind column), every kind
        gets an equal share of the pool (a one-for-all draw gave 2 of 13 kinds no exemplar at 32 problems),
        so a question-conditioned policy can show any question exemplars of its own kind.

        Raises ValueError if a drawn problem's id or question text is also held out: a prompt must
        never show the model a problem it is scored on.
        """
        train = list(train)
        if not 1 <= size <= len(train):
            raise ValueError(f"an exemplar pool of {size} problems from {len(train)} training problems")
        drawn = _draw_by_kind(train, size, random.Random(seed))
        held_ids = {p.id for p in held_out}
        held_questions = {_normalized(p.question) for p in held_out}
        leaked = [p for p in drawn if p.id in held_ids or _normalized(p.question) in held_questions]
        if leaked:
            raise ValueError(f"{len(leaked)} exemplar pool problem(s) are also validation or test problems, "
                             f"e.g. {leaked[0].question!r} (id {leaked[0].id}): the pool must come from the "
                             "training split only")
        return cls(drawn)

    def __len__(self) -> int:
        return len(self.problems)

    @property
    def has_completions(self) -> bool:
        return "completion" in self.forms_text

    def answer(self, index: int, form: str) -> str:
        if form not in ANSWER_FORMS:
            raise ValueError(f"unknown answer form {form!r}; choose from {ANSWER_FORMS}")
        if form not in self.forms_text:
            raise ValueError("the completion form needs the model's completions: call collect_completions first")
        return self.forms_text[form][index]

    def exemplar(self, index: int, form: str) -> Exemplar:
        """Pool problem `index` as a worked example with its answer in `form`."""
        return Exemplar(self.problems[index].question, self.answer(index, form))

    def collect_completions(self, engine, decoding) -> dict:
        """Fill the completion form: each pool question answered greedily with no prompt, in one
        batched call. Returns counts {"oracle_pairs", "correct"}: the pairs are the caller's to add to
        its oracle budget (0 when the form is already filled, e.g. a resumed pool)."""
        if self.has_completions:
            return {"oracle_pairs": 0, "correct": sum(1 for t in self.forms_text["completion"] if t)}
        from .grading import answer_is_complete

        rendered = [engine.render("", p.question) for p in self.problems]
        completions = engine.generate(rendered, max_new_tokens=decoding.max_new_tokens, temperature=0.0,
                                      stop=list(decoding.stop) or None,
                                      stop_when=answer_is_complete if decoding.stop_at_answer else None)
        texts, correct = [], 0
        for problem, spaced, completion in zip(self.problems, self.forms_text["spaced"], completions):
            cut = completion_cut(completion, problem.answer)
            correct += cut is not None
            texts.append(cut if cut is not None else spaced)
        self.forms_text["completion"] = texts
        return {"oracle_pairs": len(self.problems), "correct": correct}

    def to_dict(self) -> dict:
        """The pool exactly (problems and every filled form), JSON-safe: a run directory holds it."""
        return {"problems": [p.to_dict() for p in self.problems],
                "forms_text": {form: list(texts) for form, texts in self.forms_text.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "ExemplarPool":
        return cls([Problem(**p) for p in data["problems"]], data.get("forms_text"))


def few_shot_reference(train_problems: Sequence[Problem], k: int, form: str = "spaced") -> Prompt:
    """The few-shot prompt a person writes in a minute: the first `k` training problems, answers in
    `form` (bare, equation or spaced, the default: the model's own form; a person does not collect the
    model's completions), no instruction."""
    if form not in ("bare", "equation", "spaced"):
        raise ValueError(f"a few-shot reference writes its answers bare or as equations, not {form!r}")
    problems = list(train_problems)[:k]
    if k < 1 or len(problems) < k:
        raise ValueError(f"a {k}-shot reference needs {k} training problems ({len(problems)} given)")
    pool = ExemplarPool(problems)
    return Prompt("", tuple(pool.exemplar(i, form) for i in range(k)))


def reference_name(k: int, form: str = "spaced") -> str:
    """How the few-shot reference is named in reports."""
    return f"{k}-shot (first {k} training problem{'s' if k != 1 else ''}, {form} form)"


def _draw_by_kind(train: list[Problem], size: int, rng: random.Random) -> list[Problem]:
    """`size` problems of `train`, each kind (`Problem.kind`) an equal share (as equal as `size` allows; a kind
    with too few problems gives all it has and the rest go to the others). One kind, or none named: a plain
    uniform draw, exactly as before kinds were shared out."""
    by_kind: dict[str, list[Problem]] = {}
    for problem in train:
        by_kind.setdefault(problem.kind or "", []).append(problem)
    if len(by_kind) < 2:
        return rng.sample(train, size)
    queues = {kind: rng.sample(problems, len(problems)) for kind, problems in sorted(by_kind.items())}
    drawn: list[Problem] = []
    while len(drawn) < size:  # round robin over the kinds in a seeded order, each from its own shuffled queue
        for kind in rng.sample(sorted(queues), len(queues)):
            if queues[kind] and len(drawn) < size:
                drawn.append(queues[kind].pop())
    return drawn


def _normalized(question: str) -> str:
    return " ".join(question.split()).lower()
