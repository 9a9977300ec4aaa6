"""Choosing among measured prompts: the best-rewarded ones in training, compared on validation.

Random search and REINFORCE (`--finalists`) both keep, for every prompt they scored, its rewards
on the training questions (`prompt_rewards`: action tuple -> rewards); the top few by mean reward
are then scored on the validation questions.
"""

from __future__ import annotations

import numpy as np


def ranked_prompts(prompt_rewards: dict[tuple, list[float]]) -> list[tuple[tuple, list[float]]]:
    """(actions, rewards) pairs, the best mean training reward first (ties: scored on more questions)."""
    return sorted(prompt_rewards.items(), key=lambda kv: (np.mean(kv[1]), len(kv[1])), reverse=True)


def validate_finalists(env, space, val_problems, prompt_rewards: dict[tuple, list[float]], n: int) -> list[dict]:
    """Score the `n` prompts with the best mean training reward on `val_problems` (ties: more questions), each
    decoded by `space` (the run's `PromptSpace`) and scored through `env.score`.

    Returns one dict per finalist, best training reward first: prompt (its label: the text, or a structured
    prompt's `str`), actions, train_reward, train_questions, val_accuracy, and the oracle pairs spent under
    "pairs".
    """
    scored = []
    for actions, rewards in ranked_prompts(prompt_rewards)[:n]:
        prompt = space.decode(list(actions))
        # Scored as an action, as in training: an env that conditions an action on the question (the knn agent's
        # retrieval) does so here too; a plain env decodes it to `prompt` for every question.
        _, infos = env.score(val_problems, np.array([actions] * len(val_problems)), batch_label="validation")
        scored.append({"prompt": str(prompt), "actions": list(actions), "train_reward": float(np.mean(rewards)),
                       "train_questions": len(rewards), "pairs": len(val_problems),
                       "val_accuracy": float(np.mean([i["correct"] for i in infos]))})
    return scored


def prompt_rewards_to_json(prompt_rewards: dict[tuple, list[float]]) -> list:
    """The rewards as JSON for a state file: [[actions, rewards], ...], in the order they were first scored."""
    return [[list(actions), rewards] for actions, rewards in prompt_rewards.items()]


def prompt_rewards_from_json(saved: list) -> dict[tuple, list[float]]:
    return {tuple(actions): list(rewards) for actions, rewards in saved}
