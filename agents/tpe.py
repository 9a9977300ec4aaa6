"""TPE over the prompt's factors, as DSPy's MIPROv2 searches (`--agent tpe`).

Optuna's multivariate TPE sampler (`TPESampler(multivariate=True)`, MIPROv2's) proposes every slot of the
prompt space as one categorical parameter each: the exemplar slots, the answer form and the instruction
tokens, the same factors the policy chooses. MIPROv2's schedule, on the same loop as every agent:
  * the default program first: the empty prompt (an untrained policy's) is scored on the validation questions
    (the learning curve's first point, as for REINFORCE);
  * each step is `prompts_per_question` trials (MIPROv2: 1), each scored on the step's `batch_size` training
    questions (MIPROv2: a minibatch of 35), its mean reward told to the study;
  * every `eval_every` steps (MIPROv2: 5) and at the last, the candidate with the best mean minibatch reward
    that has not been fully evaluated is scored on the validation questions, and the best of those is kept.
So `--batch-size 35 --prompts-per-question 1 --eval-every 5` is MIPROv2's schedule, and at the same settings as
REINFORCE the agent spends exactly REINFORCE's oracle pairs (the same training pairs and validations).

The sampler is seeded afresh for each trial from (seed, trial number), so a run is a function of its seed and
the trials told so far: a checkpoint saves the trials, `--resume` tells them to a new study and continues
exactly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from rlprompt_math.checkpoint import POLICY_LAST
from rlprompt_math.config import ConfigError

from .base import Agent
from .finalists import prompt_rewards_from_json, prompt_rewards_to_json, ranked_prompts

__all__ = ["TpeAgent"]


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would bury the progress bar
    return optuna


class TpeAgent(Agent):
    name = "tpe"
    chooses_exemplars = True
    equal_budget = True
    names_policy = False  # one prompt for all, always

    @classmethod
    def check_config(cls, config) -> None:
        if config.policy.policy != "unconditioned":
            raise ConfigError("--agent tpe searches one prompt for all questions: use --policy unconditioned")

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        optuna = _optuna()
        self.distributions = {f"slot_{i}_{kind}": optuna.distributions.CategoricalDistribution(tuple(range(size)))
                              for i, (kind, size) in enumerate(zip(self.space.slot_kinds, self.space.slot_sizes))}
        self.study = optuna.create_study(direction="maximize")
        self.trials: list[tuple[list[int], float]] = []  # every trial told: (action row, mean minibatch reward)
        self.full_evals: dict[tuple, float] = {}  # validation accuracy of each fully evaluated candidate
        self.current: tuple = (0,) * len(self.space)  # what validation scores next, then the kept prompt

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, config.algorithm, run=run, val_problems=val_problems, engine=engine)

    def _ask(self):
        optuna = _optuna()
        seed = int(np.random.SeedSequence([self.config.seed, len(self.study.trials)]).generate_state(1)[0])
        with warnings.catch_warnings():  # multivariate TPE is marked experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
            trial = self.study.ask(self.distributions)
        return trial, [int(trial.params[name]) for name in self.distributions]

    def _tell(self, row: list[int], value: float, trial=None) -> None:
        if trial is None:  # restoring a checkpoint: the trial as it was told
            optuna = _optuna()
            params = dict(zip(self.distributions, row))
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=self.distributions,
                                                           value=value))
        else:
            self.study.tell(trial, value)
        self.trials.append((row, value))

    def update(self) -> dict:
        problems = self.draw_batch()
        asked = [self._ask() for _ in range(self.config.prompts_per_question)]
        candidates = np.array([row for _, row in asked])
        actions = np.repeat(candidates, len(problems), axis=0)
        pairs = [p for _ in range(len(candidates)) for p in problems]
        rewards, infos = self.env.score(pairs, actions, batch_label=f"step {self.step}")
        self.oracle_pairs += len(pairs)
        per_trial = rewards.reshape(len(candidates), len(problems))
        self.record_rewards(candidates.tolist(), per_trial.tolist())
        for (trial, row), values in zip(asked, per_trial):
            self._tell(row, float(values.mean()), trial)
        return self.step_metrics(rewards, infos)

    def validate(self) -> float:
        """MIPROv2's full evaluation: the candidate with the best mean minibatch reward not yet fully evaluated
        (before any trial: the empty prompt) on the validation questions."""
        waiting = {a: r for a, r in self.prompt_rewards.items() if a not in self.full_evals}
        if waiting:
            self.current = ranked_prompts(waiting)[0][0]
        accuracy = super().validate()
        # A trial's score only: the untrained empty prompt is a point of reference, never kept (as for every agent);
        # NaN: not scored (no validation questions, or --max-oracle-pairs).
        if waiting and not math.isnan(accuracy):
            self.full_evals[self.current] = accuracy
        return accuracy

    def prompt_policy(self):
        return self.fixed_prompt(list(self.current))

    @classmethod
    def validations_planned(cls, config) -> int:
        return super().validations_planned(config) + config.algorithm.finalists  # REINFORCE's plan, to the pair

    def finish(self) -> dict:
        """`--finalists` more full evaluations (the next best-averaged candidates: REINFORCE's finalists' pairs),
        then the kept prompt: the best fully evaluated (the first of equals); with none, the best mean reward."""
        for _ in range(self.config.finalists if self.val_problems else 0):
            self.keep_if_best(self.validate())
        if self.full_evals:
            self.current = max(self.full_evals, key=self.full_evals.get)
        elif self.prompt_rewards:
            self.current = ranked_prompts(self.prompt_rewards)[0][0]
        self.save_prompt(POLICY_LAST)
        return {"trials": len(self.trials), "full_evaluations": len(self.full_evals)}

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {"trials": [[row, value] for row, value in self.trials],
                    "full_evals": [[list(a), v] for a, v in self.full_evals.items()],
                    "current": list(self.current), "prompt_rewards": prompt_rewards_to_json(self.prompt_rewards)}

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        for row, value in meta["trials"]:
            self._tell(list(row), value)
        self.full_evals = {tuple(a): v for a, v in meta["full_evals"]}
        self.current = tuple(meta["current"])
        self.prompt_rewards = prompt_rewards_from_json(meta["prompt_rewards"])
