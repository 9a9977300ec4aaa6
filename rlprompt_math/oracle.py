"""Scoring (prompt, problem) pairs with the frozen LLM: the one reward path.

The environment's `step` and batched `score`, the agents and the evaluation all call
`score_pairs`, so a reward never depends on which of them asked. A prompt is text or a structured
`templates.Prompt` (instruction and exemplars); the engine renders either through `templates.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import OracleConfig
from .data import Problem
from .grading import answer_is_complete
from .engines import Engine
from .rewards import RewardMix, cached_grade
from .templates import PromptLike


@dataclass(frozen=True)
class Decoding:
    """How the oracle answers: greedy by default, short answers.

    `stop_at_answer` ends a row at the first line break after it has stated a final answer
    (`grading.answer_is_complete`): what follows is never graded unless it restates the answer,
    and on the default model it is most of the generated tokens.
    """

    max_new_tokens: int = OracleConfig.max_new_tokens
    temperature: float = 0.0
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    stop_at_answer: bool = OracleConfig.stop_at_answer


def score_pairs(engine: Engine, reward_mix: RewardMix, problems: Sequence[Problem], prompts: Sequence[PromptLike],
                decoding: Decoding = Decoding(), *, seed: int | None = None,
                batch_label: str = "") -> tuple[np.ndarray, list[dict]]:
    """Total reward and an info dict per pair, from one batched oracle call.

    Each info's "prompt" is the prompt's label (`str(prompt)`: the text itself for a plain prompt), so
    infos stay JSON-safe; the rendered text the model saw is what the rewards receive."""
    if len(prompts) != len(problems):
        raise ValueError(f"{len(prompts)} prompts for {len(problems)} problems")
    rendered = [engine.render(prompt, p.question) for prompt, p in zip(prompts, problems)]
    completions = engine.generate(rendered, max_new_tokens=decoding.max_new_tokens,
                               temperature=decoding.temperature, top_k=decoding.top_k,
                               stop=list(decoding.stop) or None, seed=seed,
                               stop_when=answer_is_complete if decoding.stop_at_answer else None,
                               watch=reward_mix.watch_tokens([p.answer for p in problems]))
    columns = {"question": [p.question for p in problems], "answer": [p.answer for p in problems],
               "problem_id": [p.id for p in problems]}
    for key in sorted({k for p in problems for k in p.extra}):
        columns.setdefault(key, [p.extra.get(key) for p in problems])
    totals, per_reward = reward_mix(rendered, completions, batch_label=batch_label, **columns)
    infos = []
    for i, problem in enumerate(problems):
        graded = cached_grade(completions[i], problem.answer)
        infos.append({"prompt": str(prompts[i]), "problem_id": problem.id, "question": problem.question,
                      "gold": problem.answer, "completion": completions[i], "extracted": graded.extracted,
                      "correct": graded.correct, "credit": graded.credit,
                      "rewards": {name: values[i] for name, values in per_reward.items()}})
    return np.asarray(totals, dtype=np.float64), infos


def decoding_from(oracle: OracleConfig, max_new_tokens: int | None = None) -> Decoding:
    """The (greedy) decoding that a run's oracle settings describe."""
    return Decoding(max_new_tokens or oracle.max_new_tokens, stop_at_answer=oracle.stop_at_answer)
