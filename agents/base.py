"""The training loop every agent runs (Stable-Baselines3's `learn`, written out to read top to bottom).

`Agent.train` first validates the untrained policy (a fresh run that validates every `eval_every` steps: the
learning curve's first point, logged as step -1; an untrained policy's greedy prompt is the empty prompt,
`prompt_space.PromptSpace`), then repeats, until `config.steps` steps are done:
  1. `update()`: one training step, the agent's own (a REINFORCE update, a gradient step through the
     frozen LLM, a round of random candidates); it returns the step's metrics;
  2. every `eval_every` steps and at the last one, `validate()`: the greedy prompt's accuracy on the
     validation questions through the oracle; a new best is saved as the kept policy (policy_best);
  3. the metrics go to `history`, metrics.csv and TensorBoard; then every callback sees them, and one
     that returns True stops training after this step;
  4. every `checkpoint_every` steps, at the end and on a stop, the policy (policy_last) and the training
     state (state_last: step, counters, random-number states, optimizer, and the agent's `extra_state`)
     are saved atomically, so `load_state` (`--resume`) continues exactly where the run stopped;
then `finish()`, the agent's last word (REINFORCE's and random search's finalists, the routes' fallback
when nothing was validated), and a summary.

A subclass defines `from_config` and `update`, and where it differs from the defaults: `prompt_policy`
(what validation scores and the policy files hold), `extra_state`/`load_extra_state`, `finish`,
`complete_metrics`, `progress_postfix`, `validation_due`, `initial_prompt`. The pieces several agents use are
written here once: `draw_batch` (the step's questions), `step_metrics` (a sampling step's metrics and samples),
`greedy_prompts`, `record_rewards`/`score_finalists`/`fixed_prompt` (finalists: measured prompts kept as fixed
policies).

What an agent can do is said on its class (`trains_by_gradient`, `chooses_exemplars`, `equal_budget`,
`validates_during_training`), and its own rules on a run's settings in `check_config`; config.py reads none of
it (it sits below the agents). The oracle pairs a run will spend are planned by `oracle_pairs_planned`, the
equal-budget rule every bench uses (tests/test_budget.py holds each agent to it). Under --max-oracle-pairs the
loop sends no step (`step_pairs`, with its validation) and no validation or finalist that would take the run
past the cap: it stops instead, keeps the best so far, and the summary says `stopped: max_oracle_pairs`.

A callback is any callable `callback(agent, metrics)`; early stopping, for one:

    def stop_when_solved(agent, metrics):
        return metrics.get("val_accuracy", 0.0) >= 0.9

    agent.train(callbacks=[stop_when_solved])
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import numpy as np
import torch

from rlprompt_math.checkpoint import (
    POLICY_BEST,
    POLICY_LAST,
    STATE_LAST,
    load_state,
    optimizer_tensors,
    restore_optimizer,
    save_policy,
    save_state,
)
from rlprompt_math.config import DEFAULT_SHOTS, AlgorithmConfig
from rlprompt_math.policies import FixedPrompt, PromptPolicy, build_policy, policy_prompts
from rlprompt_math.prompt_space import PromptSpace

from .finalists import validate_finalists

if TYPE_CHECKING:
    from rlprompt_math.config import RunConfig
    from rlprompt_math.templates import PromptLike

__all__ = ["Agent", "Callback", "NonFiniteError", "check_finite", "policy_for", "prompt_space", "validates_after"]

Callback = Callable[["Agent", dict], Optional[bool]]  # called after each step; True stops training


class NonFiniteError(FloatingPointError):
    """A reward, loss or gradient was NaN or infinite; the message says where."""


def check_finite(name: str, value: torch.Tensor, where: str) -> None:
    """Stop the run with a message naming `name` and `where` if `value` holds a NaN or an infinity."""
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"non-finite {name} at {where}: {value.detach().flatten()[:8].tolist()}")


def validates_after(step: int, steps: int, eval_every: int) -> bool:
    """Whether a run of `steps` steps that validates during training validates after step `step` (from 0): every
    `eval_every` steps (0: never) and at the last step. `Agent.validation_due` and the budget plan both ask."""
    return (bool(eval_every) and (step + 1) % eval_every == 0) or step == steps - 1


def prompt_space(env) -> PromptSpace:
    """The env's prompt space; an env-like object without one (vocab and prompt_length only) writes
    instruction slots only."""
    space = getattr(env, "space", None)
    return space if space is not None else PromptSpace(env.vocab, env.prompt_length)


def policy_for(config, env, engine) -> PromptPolicy:
    """The run config's trainable policy over the env's prompt space (its slots, its action vocabulary; one
    route for both: the agents check they agree)."""
    return build_policy(config.policy.policy, engine=engine, space=prompt_space(env), width=config.policy.policy_width,
                        pointer=config.policy.exemplar_pointer, pointer_scale=config.policy.pointer_scale)


class Agent:
    """Trains a prompt source on a PromptRefineEnv (or anything with problems, vocab, prompt_length,
    observe and score, and optionally a prompt space); see the module docstring for the loop."""

    name = "agent"  # the --agent name (its one spelling); also the progress bar's label and the state file's owner
    validates_during_training = True  # False: only at the end (random search's finalists), no curve to start
    trains_by_gradient = False  # gradients through the frozen LLM: its weights in this process, LLM rows counted
    chooses_exemplars = False  # its prompts have exemplar slots (--shots, default DEFAULT_SHOTS) and an answer form
    equal_budget = False  # spends the equal-budget rule's pairs: benches compare it with REINFORCE at equal pairs
    names_policy = True  # the default run name shows --policy (False: the agent trains no policy of that kind)

    def __init__(self, env, config: AlgorithmConfig, *, run=None, val_problems=None, engine=None):
        self.env, self.config, self.run = env, config, run
        self.space = prompt_space(env)  # what an action means: decodes prompts, shapes policies
        self.val_problems = list(val_problems or [])
        self.engine = engine if engine is not None else getattr(env, "engine", None)
        self.rng = np.random.default_rng(config.seed)  # which questions each step draws
        self.generator = torch.Generator().manual_seed(config.seed)  # sampling inside the agent
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0  # steps done
        self.best_val = -math.inf  # the kept policy's validation accuracy
        self.untrained_val: float | None = None  # the policy's before any update (validate_untrained)
        self.oracle_pairs = 0  # (prompt, question) pairs the oracle answered, validation included
        self.prompt_rewards: dict[tuple, list[float]] = {}  # sampled prompts' training rewards (for finalists)
        self.val_distinct_prompts: int | None = None  # distinct greedy prompts at the last validation
        self.history: list[dict] = []
        self.stopped: str | None = None  # why training ended early, where the loop itself ended it

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()) -> "Agent":
        """The agent a `RunConfig` asks for (the one place that maps its sections onto the constructor)."""
        raise NotImplementedError

    # ---- what the agent asks of a run's settings, and what a run will spend -----------------------------

    @classmethod
    def default_shots(cls, config: "RunConfig") -> int:
        """--shots when not given: exemplar slots where this agent and the policy can choose exemplars."""
        return DEFAULT_SHOTS if cls.chooses_exemplars and config.policy.policy != "autoregressive" else 0

    @classmethod
    def check_config(cls, config: "RunConfig") -> None:
        """This agent's own rules on a run's settings (a ConfigError naming the flag); the settings every agent
        shares are `RunConfig.validate`'s. Both run through `rlprompt_math.agents.check_config`."""

    @classmethod
    def validations_planned(cls, config: "RunConfig") -> int:
        """How often a fresh run at `config` scores its validation questions: the untrained policy (where it
        validates during training, with --eval-every > 0), then after every step `validates_after` names."""
        algorithm = config.algorithm
        untrained = cls.validates_during_training and bool(algorithm.eval_every)
        return int(untrained) + sum(validates_after(step, algorithm.steps, algorithm.eval_every)
                                    for step in range(algorithm.steps))

    @classmethod
    def training_pairs_planned(cls, config: "RunConfig") -> int:
        """The oracle pairs its training steps spend: K prompts on each of M questions a step (REINFORCE's and
        random search's round)."""
        algorithm = config.algorithm
        return algorithm.steps * algorithm.batch_size * algorithm.prompts_per_question

    @classmethod
    def oracle_pairs_plan(cls, config: "RunConfig") -> dict:
        """The parts of `oracle_pairs_planned`: {"pool", "training", "validations", "val_size"} (a ValueError where
        the plan cannot be known before the run)."""
        policy = config.policy
        shots = cls.default_shots(config) if policy.shots is None else policy.shots
        pool = policy.exemplar_pool if cls.chooses_exemplars and shots and "completion" in policy.answer_forms else 0
        return {"pool": pool, "training": cls.training_pairs_planned(config),
                "validations": cls.validations_planned(config), "val_size": config.val_size}

    @classmethod
    def oracle_pairs_planned(cls, config: "RunConfig") -> int:
        """The oracle pairs a fresh run at `config` spends (--shots not given: the agent's default): the exemplar
        pool's own completions (once), training, and `val_size` per validation. Assumes the splits hold `batch_size`
        training, `exemplar_pool` pool and `val_size` validation problems, and (finalists) that as many distinct
        prompts were sampled: what `train` spends then, to the pair."""
        plan = cls.oracle_pairs_plan(config)
        return plan["pool"] + plan["training"] + plan["validations"] * plan["val_size"]

    # ---- what an agent defines ------------------------------------------------------------------------

    def update(self) -> dict:
        """One training step; returns its metrics (keys of `runlog.METRIC_FIELDS`, "step" first)."""
        raise NotImplementedError

    def prompt_policy(self) -> PromptPolicy:
        """The prompt source that validation scores and the policy files hold."""
        return self.policy

    def policy_metadata(self) -> dict:
        """Extra metadata for the policy files."""
        return {}

    def complete_metrics(self, metrics: dict) -> None:
        """Add to a step's metrics what is known only after validation."""

    def progress_postfix(self, metrics: dict) -> dict:
        """What the progress bar shows beside the step count."""
        return {}

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The agent's own training state (tensors, JSON metadata) beside the common part."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what `extra_state` saved."""

    def finish(self) -> dict:
        """After the last step: anything to choose or save at the end; returns extra summary entries."""
        return {}

    def initial_prompt(self, probe_problems) -> str | None:
        """The untrained agent's prompt for the first probe question, shown beside the trained one (None: none)."""
        return None

    # ---- validation and the kept policy ---------------------------------------------------------------

    def _observe(self, policy: PromptPolicy, problems) -> torch.Tensor:
        """The question features `policy` reads; zeros [n, 1] for a prompt that does not depend on the question
        (the engine need not compute features then)."""
        if not policy.uses_observation:
            return torch.zeros(len(problems), 1)
        return torch.as_tensor(self.env.observe(problems), dtype=torch.float32)

    def greedy_prompts(self, problems, policy: PromptPolicy | None = None) -> list["PromptLike"]:
        """The greedy prompt of `policy` (default `prompt_policy()`) for each problem, decoded by the run's prompt
        space, the features read through the env (`policies.policy_prompts`, the one way)."""
        policy = self.prompt_policy() if policy is None else policy
        return policy_prompts(policy, self.space, problems, observe=self.env.observe)

    def step_pairs(self) -> int:
        """The oracle pairs the next `update` sends (the --max-oracle-pairs backstop asks before each step): K
        prompts on each of the step's questions (REINFORCE's and random search's round)."""
        return min(self.config.batch_size, len(self.env.problems)) * self.config.prompts_per_question

    def pairs_left(self) -> float:
        """The oracle pairs the run may still send under --max-oracle-pairs (inf without a cap)."""
        cap = self.config.max_oracle_pairs
        return cap - self.oracle_pairs if cap else math.inf

    def affords(self, pairs: int) -> bool:
        """Whether `pairs` more fit under --max-oracle-pairs; where not, the run is marked stopped by it."""
        if pairs <= self.pairs_left():
            return True
        self.stopped = "max_oracle_pairs"
        return False

    def validation_due(self) -> bool:
        """Validate after this step: every `eval_every` steps (0: never) and at the last step."""
        cfg = self.config
        return bool(self.val_problems) and validates_after(self.step, cfg.steps, cfg.eval_every)

    def validate_untrained(self, start: float) -> None:
        """The learning curve's first point: the policy before any update, validated and logged as step -1
        (a fresh run only, and only where validation runs during training). A point of reference, never kept:
        the kept prompt is always a trained policy's (the final comparison shows "no prompt" beside it)."""
        cfg = self.config
        if self.step or self.history or not (self.val_problems and cfg.eval_every and self.validates_during_training):
            return
        if not self.affords(len(self.val_problems)):  # a point of reference only: the loop stops before step 1
            return
        self.untrained_val = self.validate()
        if self.run is not None:  # metrics.csv and the plot; `history` holds steps only (callbacks see those)
            self.run.log_metrics({"step": -1, "val_accuracy": self.untrained_val, "oracle_pairs": self.oracle_pairs,
                                  "val_distinct_prompts": self.val_distinct_prompts,
                                  "wall_s": time.perf_counter() - start})

    def validate(self) -> float:
        """Greedy accuracy of `prompt_policy()` on the validation questions (the oracle's path; NaN without any)."""
        if not self.val_problems or not self.affords(len(self.val_problems)):
            return float("nan")
        prompts = self.greedy_prompts(self.val_problems, self.prompt_policy().eval())
        _, infos = self.env.score(self.val_problems, None, prompts=prompts, batch_label="validation")
        self.oracle_pairs += len(prompts)
        self.val_distinct_prompts = len(set(map(str, prompts)))  # a conditioned policy: one per kind, or one for all?
        return float(np.mean([i["correct"] for i in infos]))

    def keep_if_best(self, val_accuracy: float) -> None:
        if val_accuracy > self.best_val:
            self.best_val = val_accuracy
            self.save_prompt(POLICY_BEST, val_accuracy=val_accuracy)

    # ---- finalists: measured prompts, kept as fixed policies ---------------------------------------------

    def record_rewards(self, prompts: list[list[int]], rewards: list[list[float]]) -> None:
        """Add each scored prompt's training rewards (one per question it met) to `prompt_rewards`."""
        for row, values in zip(prompts, rewards):
            self.prompt_rewards.setdefault(tuple(row), []).extend(values)

    def score_finalists(self, candidates: dict[tuple, list[float]] | None = None) -> tuple[list[dict], dict | None]:
        """Score the `config.finalists` prompts with the best mean training reward among `candidates` (default: every
        prompt in `prompt_rewards`) on the validation questions (their pairs counted; under --max-oracle-pairs, as
        many as fit): (every finalist, best training reward first; the best on validation, the first of equals, or
        None where none fit)."""
        count = self.config.finalists
        if self.val_problems and not self.affords(count * len(self.val_problems)):
            count = int(self.pairs_left() // len(self.val_problems))
        candidates = self.prompt_rewards if candidates is None else candidates
        scored = validate_finalists(self.env, self.space, self.val_problems, candidates, count)
        self.oracle_pairs += sum(f["pairs"] for f in scored)
        return scored, max(scored, key=lambda f: f["val_accuracy"]) if scored else None

    def fixed_prompt(self, actions: list[int]) -> FixedPrompt:
        """A measured action row as a fixed policy. Its shape is the prompt space's (the row is one of the
        space's, exemplar slots included), whether or not the agent has a policy of its own."""
        return FixedPrompt(self.space.decode(actions), self.space.prompt_length, len(self.space.vocab),
                           actions=actions)

    def save_prompt(self, name: str, policy: PromptPolicy | None = None, **extra) -> None:
        """Save `policy` (default: `prompt_policy()`) as the run directory's file `name`."""
        if self.run is not None:
            save_policy(self.run.path / name, policy if policy is not None else self.prompt_policy(), self.space,
                        self.engine, step=self.step, **self.policy_metadata(), **extra)

    # ---- a training step's pieces -------------------------------------------------------------------

    def draw_batch(self, problems=None) -> list:
        """The step's `batch_size` questions, drawn without replacement from `problems` (default: the env's
        training questions) by the run's question stream (`rng`)."""
        problems = self.env.problems if problems is None else problems
        index = self.rng.choice(len(problems), size=min(self.config.batch_size, len(problems)), replace=False)
        return [problems[i] for i in index]

    def step_metrics(self, rewards: np.ndarray, infos: list[dict]) -> dict:
        """A sampling step's metrics from its scored pairs (mean reward, accuracy, the best pair's prompt); its
        best and worst pairs go to samples.jsonl."""
        correct = np.array([info["correct"] for info in infos], dtype=float)
        if self.run is not None:
            self.run.log_samples(self.step, infos, rewards)
        return {"step": self.step, "reward": float(rewards.mean()), "accuracy": float(correct.mean()),
                "oracle_pairs": self.oracle_pairs, "sample_prompt": infos[int(np.argmax(rewards))]["prompt"]}

    # ---- checkpoints ----------------------------------------------------------------------------------

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything `load_state` needs to continue exactly: tensors, and JSON metadata."""
        tensors, meta = {}, {"step": self.step, "agent": self.name}
        if self.optimizer is not None:
            optimizer, meta["optimizer"] = optimizer_tensors(self.optimizer)
            tensors.update(optimizer)
        tensors["torch_generator"] = self.generator.get_state()
        meta.update({"numpy_rng": self.rng.bit_generator.state, "best_val": self.best_val,
                     "untrained_val": self.untrained_val,
                     "oracle_pairs": self.oracle_pairs, "config": asdict(self.config)})
        extra_tensors, extra_meta = self.extra_state()
        tensors.update(extra_tensors)
        meta.update(extra_meta)
        return tensors, meta

    def load_state(self, path) -> None:
        """Continue from a state file that `save_checkpoint` wrote."""
        tensors, meta = load_state(path)
        owner = meta.get("agent", "reinforce")  # state files name their agent; before that, only REINFORCE's existed
        if owner != self.name:
            raise ValueError(f"{path} holds a {owner} run, not {self.name}")
        if self.optimizer is not None:
            restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.generator.set_state(tensors["torch_generator"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.best_val = meta["best_val"] if meta["best_val"] is not None else -math.inf
        self.untrained_val = meta.get("untrained_val")
        self.oracle_pairs, self.step = meta["oracle_pairs"], meta["step"]
        self.load_extra_state(tensors, meta)

    def save_checkpoint(self) -> None:
        if self.run is None:
            return
        self.save_prompt(POLICY_LAST)
        tensors, meta = self.state_tensors()
        save_state(self.run.path / STATE_LAST, tensors, meta)

    # ---- the loop -------------------------------------------------------------------------------------

    def train(self, progress: bool = True, callbacks: Iterable[Callback] = ()) -> dict:
        """Train from `self.step` to `config.steps` (or until a callback stops it); returns a summary."""
        from tqdm.auto import tqdm

        cfg, callbacks = self.config, list(callbacks)
        start = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, unit="step",
                   disable=not progress or self.step >= cfg.steps)
        self.validate_untrained(start)
        while self.step < cfg.steps:
            # --max-oracle-pairs: a step (with its validation) that would pass the cap is not sent
            if not self.affords(self.step_pairs() + (len(self.val_problems) if self.validation_due() else 0)):
                if self.run is not None:
                    self.save_checkpoint()
                break
            metrics = self.update()
            if self.validation_due():
                metrics["val_accuracy"] = self.validate()
                metrics["val_distinct_prompts"] = self.val_distinct_prompts
                self.keep_if_best(metrics["val_accuracy"])
            self.complete_metrics(metrics)
            metrics["wall_s"] = time.perf_counter() - start
            self.history.append(metrics)
            if self.run is not None:
                self.run.log_metrics(metrics)
            bar.set_postfix(**self.progress_postfix(metrics))
            bar.update(1)
            self.step += 1
            stop = any([bool(callback(self, metrics)) for callback in callbacks])  # a list: every callback is called
            if self.run is not None and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop):
                self.save_checkpoint()
            if stop:
                break
        bar.close()
        extra = self.finish()
        stopped = {"stopped": self.stopped} if self.stopped else {}
        return {"steps": self.step, "oracle_pairs": self.oracle_pairs, "best_val_accuracy": self.best_val,
                "untrained_val_accuracy": self.untrained_val, "wall_s": time.perf_counter() - start, **extra,
                **stopped}
