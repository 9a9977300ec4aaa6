"""REINFORCE for prompt policies.

Each step:
  1. draw `batch_size` (M) training questions and observe them (the frozen LLM's features);
  2. sample K = `prompts_per_question` prompts per question from the policy; a policy whose prompt
     does not depend on the question (unconditioned) samples K prompts and scores each on all M
     questions (a paired design: question difficulty cancels between prompts; same budget, M x K);
  3. score all pairs in one oracle call (the env's batched path: same rewards as `env.step`);
  4. advantage = reward - baseline  (optionally z-scored per question across its K prompts);
     for shared prompts, the reward of a prompt is its mean over the M questions;
  5. loss = -mean(advantage * log pi(prompt | question)) - beta(step) * mean(entropy)
     (+ the value head's squared error for the learned baseline);
  6. clip the gradient norm and step; stop with a clear message on any non-finite number;
  7. with `update_epochs` > 1, update again on the same samples and rewards with PPO's clipped ratio
     (`reuse_rewards`): more learning from each oracle pair, the policy kept near the one that sampled.
With `halving_steps` N (unconditioned policies, with finalists), the last N steps update nothing: they spend
their pairs on successive halving (`halving.SuccessiveHalving`) over the greedy prompt and the best-rewarded
samples, on new training questions, and its survivors are the finalists: what is kept has been measured on
many questions, not one step's 8.
The loop around the steps is every agent's (base.py): every `eval_every` steps the greedy prompts are
scored on validation questions, and the best policy so far is kept. With `finalists` > 0
(unconditioned policies), the sampled prompts with the best mean training reward are also scored on
the validation questions at the end, and the best of them and the greedy prompt becomes the kept
policy: the greedy prompt (the argmax of each slot) may never have been sampled as a whole, while a
finalist was measured. Every `checkpoint_every` steps the policy, optimizer, baseline, finalists'
rewards and random-number states are saved atomically, so `--resume` continues exactly where the run
stopped.

Baselines (what is subtracted from the reward):
  none            0
  moving_average  an exponential moving average of past batch-mean rewards
  batch_mean      the mean reward of the current batch
  rloo            leave-one-out: the mean of the *other* K-1 prompts' rewards on the same question
  learned         a small value network V(question features), trained by squared error
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlprompt_math.checkpoint import POLICY_BEST, optimizer_tensors, restore_optimizer
from rlprompt_math.config import BASELINES, ENTROPY_SCHEDULES, AlgorithmConfig, ConfigError
from rlprompt_math.policies import PromptPolicy

from .base import Agent, check_finite, policy_for
from .finalists import prompt_rewards_from_json, prompt_rewards_to_json, ranked_prompts
from .halving import SuccessiveHalving

__all__ = ["BASELINES", "ENTROPY_SCHEDULES", "AlgorithmConfig", "ReinforceAgent", "advantages", "entropy_coef_at"]


def entropy_coef_at(config: AlgorithmConfig, step: int) -> float:
    progress = step / max(config.steps - 1, 1)
    if config.entropy_schedule == "linear":
        return config.entropy_coef * (1 - progress)
    if config.entropy_schedule == "cosine":
        return config.entropy_coef * 0.5 * (1 + math.cos(math.pi * progress))
    return config.entropy_coef


@dataclass
class BaselineState:
    moving_average: float | None = None


def zscore(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards [M, K] standardised per row (question) across its K prompts; constant rows become 0."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)


def advantages(rewards: torch.Tensor, config: AlgorithmConfig, state: BaselineState,
               values: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages [M, K] for rewards [M, K] (M questions, K prompts each). Updates `state`."""
    r = rewards
    if config.normalize_rewards:
        r = zscore(r)
    kind = config.baseline
    if kind == "none":
        baseline = torch.zeros_like(r)
    elif kind == "batch_mean":
        baseline = r.mean().expand_as(r)
    elif kind == "moving_average":
        baseline = torch.full_like(r, state.moving_average if state.moving_average is not None else 0.0)
        mean = float(r.mean())
        d = config.moving_average_decay
        state.moving_average = mean if state.moving_average is None else d * state.moving_average + (1 - d) * mean
    elif kind == "rloo":
        k = r.shape[1]
        baseline = (r.sum(1, keepdim=True) - r) / (k - 1)
    elif kind == "learned":
        if values is None:
            raise ValueError("the learned baseline needs values")
        baseline = values.detach().view_as(r)
    else:
        raise ValueError(f"unknown baseline {kind!r}")
    return r - baseline


class ValueHead(nn.Module):
    """V(question features): the learned baseline."""

    def __init__(self, feature_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class ReinforceAgent(Agent):
    """Trains a prompt policy on a PromptRefineEnv (or anything with observe/score/problems/vocab)."""

    name = "reinforce"
    chooses_exemplars = True
    equal_budget = True

    @classmethod
    def check_config(cls, config) -> None:
        config.algorithm.validate()
        if config.policy.shots and config.policy.policy == "autoregressive":
            raise ConfigError("--policy autoregressive writes instruction tokens only: with --shots > 0 use "
                              "--policy unconditioned or refiner")
        algorithm = config.algorithm
        if algorithm.halving_steps:
            if algorithm.halving_steps >= algorithm.steps:
                raise ConfigError(f"--halving-steps {algorithm.halving_steps} must be fewer than --steps "
                                  f"{algorithm.steps}: the steps before them train the policy")
            if config.policy.policy != "unconditioned" or not algorithm.finalists:
                raise ConfigError("--halving-steps measures one prompt for all questions and hands its survivors to "
                                  "the finalists: use --policy unconditioned and --finalists >= 1")

    @classmethod
    def validations_planned(cls, config) -> int:
        # `finalists` more at the end, for a policy whose prompt is the same for every question
        finalists = config.algorithm.finalists if config.policy.policy == "unconditioned" else 0
        return super().validations_planned(config) + finalists

    def __init__(self, env, policy: PromptPolicy, config: AlgorithmConfig, *, run=None,
                 val_problems=None, engine=None):
        config.validate()
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        if policy.slot_sizes != self.space.slot_sizes:
            raise ValueError(f"the policy writes {len(policy.slot_sizes)} slots of sizes {policy.slot_sizes}; the env "
                             f"takes {len(self.space)} ({self.space.describe()}: sizes {self.space.slot_sizes})")
        self.policy = policy
        optimizer = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[config.optimizer]
        # A logit table at --lr; a question-conditioned policy's network weights at --network-lr.
        self.optimizer = optimizer(policy.parameter_groups(config.lr, config.network_lr))
        self.value_head = None
        if config.baseline == "learned":
            dim = env.observe(env.problems[:1]).shape[1]
            self.value_head = ValueHead(dim)
            self.value_optimizer = torch.optim.Adam(self.value_head.parameters(), lr=config.value_lr)
        self.baseline_state = BaselineState()
        # --halving-steps: the last steps measure the greedy and the best samples by successive halving
        self.halving = (SuccessiveHalving(config.halving_steps * self.step_pairs(),
                                          min(config.batch_size, len(env.problems)), config.finalists)
                        if config.halving_steps else None)

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, policy_for(config, env, engine), config.algorithm, run=run, val_problems=val_problems,
                   engine=engine)

    def initial_prompt(self, probe_problems):
        probe = list(probe_problems)[:1]
        return str(self.greedy_prompts(probe, self.policy)[0]) if probe else None

    def _observe(self, policy, problems) -> torch.Tensor:
        if self.value_head is not None:  # the learned baseline reads every question's features
            return torch.as_tensor(self.env.observe(problems), dtype=torch.float32)
        return super()._observe(policy, problems)

    # ---- one update --------------------------------------------------------------------------------

    def halving_candidates(self, count: int) -> list[tuple]:
        """The first rung of --halving-steps: the greedy prompt, then the distinct sampled prompts by mean training
        reward, then (where those are fewer than `count`) new samples of the policy."""
        greedy = tuple(int(a) for a in self.policy.greedy(torch.zeros(1, 1))[0])
        chosen = dict.fromkeys([greedy, *(actions for actions, _ in ranked_prompts(self.prompt_rewards))])
        for _ in range(10):  # a policy that has collapsed may not have `count` distinct prompts in it
            if len(chosen) >= count:
                break
            more = self.policy.sample(torch.zeros(count, 1), generator=self.generator)
            chosen.update(dict.fromkeys(tuple(int(a) for a in row) for row in more.tolist()))
        return list(chosen)[:count]

    def update(self) -> dict:
        cfg, step = self.config, self.step
        if self.halving is not None and step >= cfg.steps - cfg.halving_steps:  # no policy update: measurement
            rewards, infos = self.halving.send(self, self.step_pairs(), self.halving_candidates)
            return self.step_metrics(rewards, infos) if infos else {"step": step, "oracle_pairs": self.oracle_pairs}
        where = f"step {step}"
        problems = self.draw_batch()
        k, m = cfg.prompts_per_question, len(problems)
        obs = self._observe(self.policy, problems)
        shared = not self.policy.uses_observation
        # Shared prompts: K prompts, each on every question. Otherwise K prompts per question.
        obs_rep = obs[:1].expand(k, -1) if shared else obs.repeat_interleave(k, 0)
        self.policy.train()
        actions = self.policy.sample(obs_rep, temperature=cfg.sample_temperature, top_k=cfg.sample_top_k,
                                     generator=self.generator)
        # Question-major pairs: row i*k + j is (question i, prompt j).
        pair_actions = actions.repeat(m, 1) if shared else actions
        problems_rep = [p for p in problems for _ in range(k)]
        rewards_np, infos = self.env.score(problems_rep, pair_actions.numpy(), batch_label=where)
        self.oracle_pairs += len(problems_rep)
        rewards = torch.as_tensor(rewards_np, dtype=torch.float32).view(m, k)
        check_finite("reward", rewards, where)

        if shared:
            self.record_rewards(actions.tolist(), rewards.T.tolist())
            if cfg.normalize_rewards:
                # Each question z-scored across the K prompts before the mean, so every question
                # weighs the same whatever its reward scale; `advantages` then z-scores the K means.
                rewards = zscore(rewards)
            rewards = rewards.mean(0, keepdim=True)  # [1, K]: each prompt's mean over the questions
        values = self.value_head(obs_rep) if self.value_head is not None else None
        adv = advantages(rewards, cfg, self.baseline_state, values).view(-1)
        slot_entropy = self.entropy_by_slot_kind(obs_rep, actions)  # before the update, as `entropy` is
        log_prob, entropy = self.policy.log_prob(obs_rep, actions)
        check_finite("log-probability", log_prob, where)
        coef = entropy_coef_at(cfg, step)
        loss = -(adv.detach() * log_prob).mean() - coef * entropy.mean()
        check_finite("loss", loss, f"{where} (advantage mean {adv.mean():.4g}, entropy {entropy.mean():.4g})")
        self.optimizer.zero_grad()
        loss.backward()
        for name, parameter in self.policy.named_parameters():
            if parameter.grad is not None:
                check_finite(f"gradient of {name}", parameter.grad, where)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
        self.optimizer.step()
        for epoch in range(1, cfg.update_epochs):  # the same rewards again, PPO's clipped ratio
            self.reuse_rewards(obs_rep, actions, log_prob.detach(), adv.detach(), coef, f"{where}, epoch {epoch}")
        if self.value_head is not None:
            value_loss = ((values - rewards.reshape(-1)) ** 2).mean()
            check_finite("value loss", value_loss, where)
            self.value_optimizer.zero_grad()
            value_loss.backward()
            self.value_optimizer.step()

        return {**self.step_metrics(rewards_np, infos),
                "entropy": float(entropy.detach().mean()) / max(len(self.policy.slot_sizes), 1), **slot_entropy,
                "entropy_coef": coef, "loss": float(loss.detach()), "grad_norm": grad_norm}

    def reuse_rewards(self, obs, actions, sampled_log_prob, adv, coef: float, where: str) -> None:
        """One more update on a step's samples (--update-epochs): PPO's clipped surrogate, the ratio of the policy now
        to the policy that sampled them, so a prompt's probability moves at most `clip_ratio` past where it was."""
        log_prob, entropy = self.policy.log_prob(obs, actions)
        ratio = torch.exp(log_prob - sampled_log_prob)
        clip = self.config.clip_ratio
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
        loss = -surrogate.mean() - coef * entropy.mean()
        check_finite("loss", loss, where)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()

    def entropy_by_slot_kind(self, obs: torch.Tensor, actions: torch.Tensor) -> dict:
        """Mean entropy per slot (nats) of the exemplar slots, the answer form and the instruction words, before
        this step's update: `entropy_exemplars`, `entropy_form`, `entropy_words` (absent where no such slot)."""
        per_slot = self.policy.slot_entropy(obs, actions).mean(0)
        kinds = np.array(self.space.slot_kinds)
        names = {"exemplar": "entropy_exemplars", "form": "entropy_form", "token": "entropy_words"}
        return {names[kind]: float(per_slot[torch.as_tensor(kinds == kind)].mean()) for kind in names
                if (kinds == kind).any()}

    def progress_postfix(self, metrics: dict) -> dict:
        if "entropy" not in metrics:  # a --halving-steps step: measurement, no update
            return {"reward": f"{metrics.get('reward', float('nan')):.3f}", "halving": True, "oracle": self.oracle_pairs}
        return {"reward": f"{metrics['reward']:.3f}", "acc": f"{metrics['accuracy']:.2f}",
                "H": f"{metrics['entropy']:.2f}", "oracle": self.oracle_pairs}

    # ---- the end: finalists ------------------------------------------------------------------------

    def select_finalist(self) -> dict | None:
        """Validate the best-rewarded sampled prompts; keep one if it beats the best policy so far."""
        if not (self.config.finalists and self.prompt_rewards and self.val_problems
                and not self.policy.uses_observation):
            return None
        # --halving-steps: its last rung's survivors, ranked by what halving measured; else every sample
        scored, best = self.score_finalists(dict(self.halving.ranked()) if self.halving is not None else None)
        if best is None:  # --max-oracle-pairs left room for none
            return None
        if best["val_accuracy"] > self.best_val:
            self.best_val = best["val_accuracy"]
            self.save_prompt(POLICY_BEST, self.fixed_prompt(best["actions"]), val_accuracy=self.best_val)
            best = {**best, "kept": True}
        return {"finalists": scored, "chosen": best}

    def finish(self) -> dict:
        finalists = self.select_finalist()
        return {"finalists": finalists} if finalists else {}

    # ---- state beside the loop's: the policy, the baseline, the finalists' rewards -----------------------

    def extra_state(self) -> tuple[dict, dict]:
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        meta = {"baseline_state": asdict(self.baseline_state),
                "prompt_rewards": prompt_rewards_to_json(self.prompt_rewards)}
        if self.halving is not None:
            meta["halving"] = self.halving.state()
        if self.value_head is not None:
            tensors.update({f"value.{k}": v for k, v in self.value_head.state_dict().items()})
            value_tensors, meta["value_optimizer"] = optimizer_tensors(self.value_optimizer)
            tensors.update({f"value_{k}": v for k, v in value_tensors.items()})
        return tensors, meta

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        self.policy.load_state_dict({k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")})
        self.baseline_state = BaselineState(**meta["baseline_state"])
        self.prompt_rewards = prompt_rewards_from_json(meta.get("prompt_rewards", []))
        if self.halving is not None:
            self.halving.load(meta["halving"])
        if self.value_head is not None:
            self.value_head.load_state_dict({k[len("value."):]: v for k, v in tensors.items() if k.startswith("value.")})
            restore_optimizer(self.value_optimizer,
                              {k[len("value_"):]: v for k, v in tensors.items() if k.startswith("value_optim.")},
                              meta["value_optimizer"])
