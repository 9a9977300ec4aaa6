"""A hand-written prompt, through the same pipeline: nothing is learned (zero steps); at the end it is
validated and saved as a policy, so that evaluation and comparison treat it exactly like a trained one."""

from __future__ import annotations

from rlprompt_math.checkpoint import POLICY_BEST, POLICY_LAST
from rlprompt_math.config import AlgorithmConfig
from rlprompt_math.policies import FixedPrompt

from .base import Agent


class FixedPromptAgent(Agent):
    name = "fixed"

    @classmethod
    def training_pairs_planned(cls, config) -> int:
        return 0  # zero steps, whatever --steps says

    @classmethod
    def validations_planned(cls, config) -> int:
        # Its zero-step loop validates the prompt once as the untrained point (AlgorithmConfig's eval_every is
        # not 0), and `finish` once more (the engine's greedy cache answers the second).
        return 2

    def __init__(self, env, text: str, *, run=None, val_problems=None, engine=None, max_oracle_pairs: int = 0):
        super().__init__(env, AlgorithmConfig(steps=0, max_oracle_pairs=max_oracle_pairs), run=run,
                         val_problems=val_problems, engine=engine)
        self.policy = FixedPrompt(text, env.prompt_length, len(env.vocab))

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, config.policy.fixed_prompt, run=run, val_problems=val_problems, engine=engine,
                   max_oracle_pairs=config.algorithm.max_oracle_pairs)

    def finish(self) -> dict:
        self.best_val = self.validate()  # NaN without validation questions
        for name in (POLICY_BEST, POLICY_LAST):
            self.save_prompt(name)
        return {}
