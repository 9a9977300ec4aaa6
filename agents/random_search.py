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
from .finalists import prompt_rewards_from_json, prompt_rewards_to_json, ranked_prompts, validate_finalists


class RandomSearchAgent(Agent):
    name = "random"

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        self.prompt_rewards: dict[tuple, list[float]] = {}  # every candidate's rewards, one per question
        self.policy: FixedPrompt | None = None  # the chosen prompt, once training is over

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, config.algorithm, run=run, val_problems=val_problems, engine=engine)

    def update(self) -> dict:
        cfg, env = self.config, self.env
        index = self.rng.choice(len(env.problems), size=min(cfg.batch_size, len(env.problems)), replace=False)
        problems = [env.problems[i] for i in index]
        candidates = self.space.sample(self.rng, cfg.prompts_per_question)
        actions = np.repeat(candidates, len(problems), axis=0)
        pairs = [p for _ in range(len(candidates)) for p in problems]
        rewards, infos = env.score(pairs, actions, batch_label=f"step {self.step}")
        self.oracle_pairs += len(pairs)
        per_candidate = rewards.reshape(len(candidates), len(problems))
        for row, values in zip(candidates, per_candidate):
            self.prompt_rewards.setdefault(tuple(int(a) for a in row), []).extend(values.tolist())
        correct = np.array([i["correct"] for i in infos], dtype=float)
        if self.run is not None:
            self.run.log_samples(self.step, infos, rewards)
        return {"step": self.step, "reward": float(rewards.mean()), "accuracy": float(correct.mean()),
                "oracle_pairs": self.oracle_pairs, "sample_prompt": infos[int(np.argmax(rewards))]["prompt"]}

    validates_during_training = False  # candidates meet the validation questions only at the end, as finalists

    def validation_due(self) -> bool:
        return False

    def fixed_prompt(self, actions: list[int]) -> FixedPrompt:
        return FixedPrompt(self.space.decode(actions), self.env.prompt_length, len(self.env.vocab),
                           actions=actions)

    def prompt_policy(self) -> FixedPrompt:
        """The chosen prompt once training is over; before, the best mean training reward so far."""
        if self.policy is not None:
            return self.policy
        return self.fixed_prompt(list(ranked_prompts(self.prompt_rewards)[0][0]))

    def finish(self) -> dict:
        best, self.best_val = list(ranked_prompts(self.prompt_rewards)[0][0]), float("nan")  # NaN: not validated
        if self.val_problems and self.config.finalists:
            scored = validate_finalists(self.env, self.val_problems, self.prompt_rewards, self.config.finalists)
            self.oracle_pairs += sum(f["pairs"] for f in scored)
            chosen = max(scored, key=lambda f: f["val_accuracy"])  # first of equals: best training reward
            best, self.best_val = chosen["actions"], chosen["val_accuracy"]
        self.policy = self.fixed_prompt(best)
        for name in (POLICY_BEST, POLICY_LAST):
            self.save_prompt(name)
        return {}

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {"prompt_rewards": prompt_rewards_to_json(self.prompt_rewards)}

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        self.prompt_rewards = prompt_rewards_from_json(meta["prompt_rewards"])
