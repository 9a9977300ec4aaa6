"""Reward functions: TRL's protocol, the built-ins, weighted mixes and user plug-ins.

A reward function is anything with TRL's signature

    fn(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]

where `prompts` are the rendered texts the LLM saw, `completions` its answers, and the keyword
arguments carry the problems' columns (at least `question` and `answer`, one list entry per
sample). `None` means "no opinion on this sample". A reward written for TRL's GRPOTrainer works
here unchanged, and ours work there.

Built-ins (name -> function):
  correct     1.0 if the extracted answer equals the gold answer (sympy), else 0.0
  correct_strict  the same, but exact values need exact answers (0.33 is not 1/3; see grading)
  partial     partial credit in [0, 1] (see grading.partial_credit for the formula)
  format      1.0 if a final answer could be extracted, else 0.0
  likelihood  exp(mean log p(gold answer tokens | prompt)) in (0, 1]: the per-token geometric-mean
              probability of the gold answer under teacher forcing (needs the engine)
  answer_likelihood
              p(gold answer | prompt + the completion up to where it states its final number), in
              (0, 1]: the gold answer scored in the model's own format ("36 + 32 = " -> "68"), read
              from the decode's own logits (see AnswerLikelihood; bench/learning_signal.py)

Specs, from the CLI (`--reward SPEC`, repeatable) or Python (`load_reward(SPEC)`):
  correct | correct:0.5 | correct_strict:0.5 | my_rewards.py:brevity | my_rewards.py:brevity:0.1 | pkg.module:fn:2
The last field, when it is a number, is the weight (default 1).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .grading import Grade, answer_position, grade

RewardFn = Callable[..., Sequence]


class RewardError(RuntimeError):
    """A reward function misbehaved or could not be loaded; the message names it."""


@functools.lru_cache(maxsize=65_536)
def cached_grade(completion: str, gold: str) -> Grade:
    """`grading.grade`, memoised: correct, partial and format share one grading per sample."""
    return grade(completion, gold)


def correct(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's final answer equals the gold answer, else 0.0."""
    return [float(cached_grade(c, str(a)).correct) for c, a in zip(completions, answer)]


@functools.lru_cache(maxsize=65_536)
def cached_strict_grade(completion: str, gold: str) -> Grade:
    """`grading.grade(..., strict=True)`, memoised."""
    return grade(completion, gold, strict=True)


def correct_strict(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the final answer equals the gold answer exactly: a decimal approximation of a value
    with no finite decimal form (0.33 for 1/3, 3.14 for pi) is wrong (MATH / Minerva-style exact
    match), unlike `correct`, which accepts a correctly rounded decimal within 1%."""
    return [float(cached_strict_grade(c, str(a)).correct) for c, a in zip(completions, answer)]


def partial(prompts, completions, answer, **kwargs) -> list[float]:
    """Partial credit in [0, 1]: 1 when equal, graded credit for near misses."""
    return [cached_grade(c, str(a)).credit for c, a in zip(completions, answer)]


def format_(prompts, completions, answer=None, **kwargs) -> list[float]:
    """1.0 when a final answer could be extracted from the completion."""
    return [float(cached_grade(c, str(a) if answer else "0").extracted is not None)
            for c, a in zip(completions, answer or [None] * len(completions))]


format_.__name__ = "format"


class Likelihood:
    """exp(mean per-token log p(gold answer | rendered prompt)) from the frozen LLM, in (0, 1]."""

    __name__ = "likelihood"
    needs_engine = True

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, prompts, completions, answer, **kwargs) -> list[float]:
        means = self.engine.answer_logprobs(list(prompts), [str(a) for a in answer], reduction="mean")
        return [math.exp(m) for m in means]


class AnswerLikelihood(Likelihood):
    """p(gold answer | the model's own lead-in to its final number), in (0, 1]: a dense reward.

    The lead-in is the completion up to where it states its final number (`grading.answer_position`:
    "36 + 32 = " for "36 + 32 = 68"). The gold answer's tokens are scored there up to and including
    the first one where the model's own answer departs from it (after that the model's path and the
    gold's differ, and the decode never saw the gold's context): exactly p(gold) when the answer is
    right, the probability of the first wrong step otherwise. The numbers come from the greedy
    decode's own logits (`TransformersEngine.trace`: the oracle asks `generate` to record them, see
    `watch_tokens`), so the reward costs no forward pass; a pair without a usable trace (no token
    boundary at the answer, a sampled decode) is teacher-forced to the same quantity.
    """

    __name__ = "answer_likelihood"

    def watch_tokens(self, answers: Sequence[str]) -> list[int]:
        """The token ids the decode should record: those of the gold answers."""
        return sorted({t for a in answers for t in self._ids(a)})

    def _ids(self, text: str) -> list[int]:
        return self.engine.tokenizer(str(text), add_special_tokens=False)["input_ids"]

    def __call__(self, prompts, completions, answer, **kwargs) -> list[float]:
        tokenizer = self.engine.tokenizer
        logprobs: list[float | None] = []
        forced: list[int] = []  # pairs to teacher-force
        scored_ids: list[list[int]] = []
        for i, (prompt, completion, gold) in enumerate(zip(prompts, completions, answer)):
            position = answer_position(completion)
            gold_ids = self._ids(gold)
            trace = self.engine.trace(prompt)
            start = trace.token_index(tokenizer, completion, position) if trace is not None else None
            own = list(trace.token_ids[start:]) if start is not None else self._ids(completion[position:])
            ids = gold_ids[:_departure(gold_ids, own)]
            scored_ids.append(ids)
            value = trace.logprob(start, ids) if start is not None and trace.covers(ids) else None
            logprobs.append(value)
            if value is None:
                forced.append(i)
        if forced:
            lead_ins = [prompts[i] + completions[i][:answer_position(completions[i])] for i in forced]
            texts = [tokenizer.decode(scored_ids[i]) for i in forced]
            for i, value in zip(forced, self.engine.answer_logprobs(lead_ins, texts, reduction="sum")):
                logprobs[i] = value
        return [math.exp(v) for v in logprobs]


def _departure(gold_ids: Sequence[int], own_ids: Sequence[int]) -> int:
    """How many gold tokens to score: those the model's own answer shares, and the first that differs."""
    shared = 0
    while shared < min(len(gold_ids), len(own_ids)) and gold_ids[shared] == own_ids[shared]:
        shared += 1
    return min(shared + 1, len(gold_ids))


BUILTINS: dict[str, Callable] = {"correct": correct, "correct_strict": correct_strict, "partial": partial,
                                 "format": format_, "likelihood": Likelihood,
                                 "answer_likelihood": AnswerLikelihood}


@dataclass
class Reward:
    """One reward function with its weight and a display name."""

    fn: RewardFn
    weight: float = 1.0
    name: str = ""

    def __post_init__(self):
        self.name = self.name or getattr(self.fn, "__name__", type(self.fn).__name__)


def _load_callable(target: str, name: str) -> Callable:
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise RewardError(f"reward file not found: {path}")
        module_name = f"rlprompt_user_reward_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise RewardError(f"importing reward file {path} failed: {error}") from error
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise RewardError(f"cannot import reward module {target!r}: {error}") from error
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"{target} has no callable named {name!r}")
    return fn


def load_reward(spec: str | Callable | Reward, *, engine=None, weight: float | None = None) -> Reward:
    """A `Reward` from a spec string, a callable, or a `Reward` (see the module docstring)."""
    if isinstance(spec, Reward):
        return spec
    if callable(spec):
        return Reward(spec, 1.0 if weight is None else weight)
    fields = str(spec).split(":")
    parsed_weight = None
    if len(fields) > 1 and re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", fields[-1]):
        parsed_weight = float(fields[-1])  # a plain number only: a function may be named "nan"
        fields = fields[:-1]
    w = weight if weight is not None else (parsed_weight if parsed_weight is not None else 1.0)
    if len(fields) == 1:
        name = fields[0]
        if name not in BUILTINS:
            raise RewardError(f"unknown reward {name!r}; built-ins are {', '.join(BUILTINS)}, or give "
                              "module:function or path/to/file.py:function")
        builtin = BUILTINS[name]
        if getattr(builtin, "needs_engine", False):
            if engine is None:
                raise RewardError(f"the {name!r} reward needs the frozen LLM")
            return Reward(builtin(engine), w, name)
        return Reward(builtin, w, name)
    target, fn_name = ":".join(fields[:-1]), fields[-1]
    fn = _load_callable(target, fn_name)
    if inspect.isclass(fn):
        fn = fn(engine) if engine is not None else fn()
    return Reward(fn, w, fn_name)


def _check_output(reward: Reward, values, n: int, batch_label: str) -> list[float | None]:
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward {reward.name!r} returned {type(values).__name__}, not a list "
                          f"({batch_label})") from None
    if len(values) != n:
        raise RewardError(f"reward {reward.name!r} returned {len(values)} values for {n} completions "
                          f"({batch_label})")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise RewardError(f"reward {reward.name!r} returned {v!r} for sample {i} ({batch_label}); "
                              "expected a number or None") from None
        if not math.isfinite(v):
            raise RewardError(f"reward {reward.name!r} returned {v} for sample {i} ({batch_label})")
        out.append(v)
    return out


class RewardMix:
    """Several rewards combined with weights: total = sum of weight x value over non-None values."""

    def __init__(self, rewards: Sequence[Reward | str | Callable], *, engine=None):
        self.rewards = [load_reward(r, engine=engine) for r in rewards]
        seen: dict[str, int] = {}
        for reward in self.rewards:  # two rewards with one name would overwrite each other's log
            seen[reward.name] = seen.get(reward.name, 0) + 1
            if seen[reward.name] > 1:
                reward.name = f"{reward.name}_{seen[reward.name]}"
        if not self.rewards:
            raise RewardError("at least one reward function is needed")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def needs_engine(self) -> bool:
        """Whether a reward asks the frozen LLM for log-probabilities (the likelihood rewards)."""
        return any(getattr(r.fn, "needs_engine", False) for r in self.rewards)

    def watch_tokens(self, answers: Sequence[str]) -> list[int] | None:
        """Token ids whose decode-time log-probabilities some reward reads (None: no reward does)."""
        ids = {t for r in self.rewards if hasattr(r.fn, "watch_tokens") for t in r.fn.watch_tokens(answers)}
        return sorted(ids) if ids else None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], *, batch_label: str = "",
                 **columns) -> tuple[list[float], dict[str, list[float | None]]]:
        """(total per sample, each reward's values per sample)."""
        n = len(completions)
        per_reward: dict[str, list[float | None]] = {}
        for reward in self.rewards:
            try:
                values = reward.fn(prompts=list(prompts), completions=list(completions), **columns)
            except RewardError:
                raise
            except Exception as error:
                raise RewardError(f"reward {reward.name!r} raised {type(error).__name__}: {error} "
                                  f"({batch_label})") from error
            per_reward[reward.name] = _check_output(reward, values, n, batch_label)
        totals = []
        for i in range(n):
            total = 0.0
            for reward in self.rewards:
                v = per_reward[reward.name][i]
                if v is not None:
                    total += reward.weight * v
            totals.append(total)
        return totals, per_reward

    def describe(self) -> str:
        return " + ".join(f"{r.weight:g}*{r.name}" for r in self.rewards)
