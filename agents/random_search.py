"""Random search over prompts, on the same oracle budget as REINFORCE.

Each step draws K uniformly random prompts from the prompt space (each slot uniform: instruction
tokens, and with --shots the exemplars and their answer form) and scores each on the
step's `batch_size` questions: K x batch_size oracle pairs, exactly what REINFORCE spends per step.
The prompt with the best mean reward so far (ties: the one scored on more questions) wins; the
`config.finalists` candidates (0: off) are then compared on the validation questions and the best
becomes a fixed policy, as REINFORCE's finalists are. Nothing is validated during training (there is
no greedy policy to score); checkpoints hold the leader so far as policy_last, and the random-number
state and every candidate's rewards, so `--resume` continues exactly.
"""

from __future__ import annotations

import numpy as np

from rlprompt_math.checkpoint import POLICY_BEST, POLICY_LAST
from rlprompt_math.policies import FixedPrompt

from .base import Agent
from .finalists import prompt_rewards_from_json, prompt_rewards_to_json, ranked_prompts


class RandomSearchAgent(Agent):
    name = "random"
    chooses_exemplars = True
    equal_budget = True
    validates_during_training = False  # candidates meet the validation questions only at the end, as finalists

    @classmethod
    def validations_planned(cls, config) -> int:
        return config.algorithm.finalists

    @classmethod
    def finalists_for(cls, pairs: int, config) -> int:
        """The finalists that make a run at `config` spend `pairs` oracle pairs (another learner's
        `oracle_pairs_planned`, for an equal budget); a ValueError where no number of finalists does."""
        from dataclasses import replace

        bare = replace(config, algorithm=replace(config.algorithm, finalists=0))
        finalists, rest = divmod(pairs - cls.oracle_pairs_planned(bare), config.val_size)
        if finalists < 0 or rest:
            raise ValueError(f"random search at these settings spends {cls.oracle_pairs_planned(bare)} oracle pairs "
                             f"and {config.val_size} more per finalist: no number of finalists makes {pairs}")
        return finalists

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        self.policy: FixedPrompt | None = None  # the chosen prompt, once training is over

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, config.algorithm, run=run, val_problems=val_problems, engine=engine)

    def update(self) -> dict:
        problems = self.draw_batch()
        candidates = self.space.sample(self.rng, self.config.prompts_per_question)
        actions = np.repeat(candidates, len(problems), axis=0)
        pairs = [p for _ in range(len(candidates)) for p in problems]
        rewards, infos = self.env.score(pairs, actions, batch_label=f"step {self.step}")
        self.oracle_pairs += len(pairs)
        self.record_rewards(candidates.tolist(), rewards.reshape(len(candidates), len(problems)).tolist())
        return self.step_metrics(rewards, infos)

    def validation_due(self) -> bool:
        return False

    def candidates(self) -> dict[tuple, list[float]]:
        """The measured prompts the kept one is chosen among (with their training rewards): every one scored."""
        return self.prompt_rewards

    def prompt_policy(self) -> FixedPrompt:
        """The chosen prompt once training is over; before, the candidate with the best mean training reward so far
        (the empty prompt before any is scored)."""
        if self.policy is not None:
            return self.policy
        ranked = ranked_prompts(self.candidates())
        return self.fixed_prompt(list(ranked[0][0]) if ranked else [0] * len(self.space))

    def finish(self) -> dict:
        candidates = self.candidates()
        ranked = ranked_prompts(candidates)  # empty only where --max-oracle-pairs left room for no step
        best, self.best_val = list(ranked[0][0]) if ranked else [0] * len(self.space), float("nan")  # NaN: not validated
        if self.val_problems and self.config.finalists:
            _, chosen = self.score_finalists(candidates)  # the first of equals: the best training reward
            if chosen is not None:  # None: --max-oracle-pairs left room for no finalist
                best, self.best_val = chosen["actions"], chosen["val_accuracy"]
        self.policy = self.fixed_prompt(best)
        for name in (POLICY_BEST, POLICY_LAST):
            self.save_prompt(name)
        return {}

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {"prompt_rewards": prompt_rewards_to_json(self.prompt_rewards)}

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        self.prompt_rewards = prompt_rewards_from_json(meta["prompt_rewards"])
