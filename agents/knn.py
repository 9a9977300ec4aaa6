"""Nearest-neighbour exemplar retrieval (KATE, Liu et al. 2022): a conditioned baseline that needs no RL.

Each question is shown the `--shots` pool problems nearest to it in the engine's question-feature space
(`policies.NearestExemplars`: `centred_cosine`, the similarity the Refiner's pointer head starts from), and the
answer form and instruction words, one for all questions, are found by random search: `RandomSearchAgent` as it
is, on the same batches, with the same candidates' form and words at the same seed, the same oracle pairs and
the same finalist rule. Two things differ, both around it:
  * a candidate's exemplar slots are left at "none" (`RetrievalSpace.sample`, after the same random draws), so
    a candidate is its form and words alone;
  * every (question, candidate) pair is scored with the question's own nearest exemplars (`RetrievingEnv`), in
    training and for the finalists on validation.
The kept policy is a `NearestExemplars`: the chosen form and words, exemplars retrieved per question.
"""

from __future__ import annotations

import numpy as np
import torch

from rlprompt_math.config import ConfigError
from rlprompt_math.policies import NearestExemplars, pool_features
from rlprompt_math.prompt_space import PromptSpace

from .random_search import RandomSearchAgent


class RetrievalSpace(PromptSpace):
    """The run's prompt space, whose random candidates leave the exemplar slots to retrieval."""

    @classmethod
    def of(cls, space: PromptSpace) -> "RetrievalSpace":
        return cls(space.vocab, space.prompt_length, space.pool, space.shots, space.forms)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        actions = super().sample(rng, n)  # the same draws as random search's: the same batches follow
        actions[:, : self.shots] = self.none_index
        return actions


class RetrievingEnv:
    """The environment, with each question's nearest exemplars put into every action it scores (`retrieval`:
    a `NearestExemplars`); everything else is the environment's own."""

    def __init__(self, env, retrieval: NearestExemplars):
        self.env, self.retrieval = env, retrieval

    def __getattr__(self, name):
        return getattr(self.env, name)

    def score(self, problems, actions, *, prompts=None, **kwargs):
        if prompts is None:
            obs = torch.as_tensor(self.env.observe(problems), dtype=torch.float32)
            rows = torch.as_tensor(np.asarray(actions).reshape(len(problems), -1))
            actions = self.retrieval.with_exemplars(obs, rows).numpy()
        return self.env.score(problems, actions, prompts=prompts, **kwargs)


class KnnAgent(RandomSearchAgent):
    """Random search's loop, draws, budget (`equal_budget`, its finalists: `finalists_for`) and finalist rule, as
    inherited; only the space it samples, the env it scores through and the policy it keeps differ."""

    name = "knn"

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if not config.policy.shots:
            raise ConfigError("--agent knn shows each question its nearest pool problems: --shots must be >= 1 "
                              "(for instruction words alone, use --agent random)")

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        space = self.space
        self.retrieval = NearestExemplars(space.prompt_length, len(space.vocab), space.factor_sizes, shots=space.shots,
                                          pool_keys=pool_features(self.engine, space) if space.shots else None)
        self.space = RetrievalSpace.of(space)
        self.env = RetrievingEnv(env, self.retrieval)

    def fixed_prompt(self, actions: list[int]) -> NearestExemplars:
        """The policy a searched candidate (its form and words) stands for: exemplars retrieved per question."""
        space = self.space
        return NearestExemplars(space.prompt_length, len(space.vocab), space.factor_sizes, shots=self.retrieval.shots,
                                pool_keys=self.retrieval.keys if self.retrieval.shots else None, actions=actions)
