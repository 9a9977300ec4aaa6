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
  6. clip the gradient norm and step; stop with a clear message on any non-finite number.
Every `eval_every` steps the greedy prompts are scored on validation questions; the best policy so
far is kept. With `finalists` > 0 (unconditioned policies), the sampled prompts with the best mean
training reward are also scored on the validation questions at the end, and the best of them and the
greedy prompt becomes the kept policy: the greedy prompt (the argmax of each slot) may never have
been sampled as a whole, while a finalist was measured. Every `checkpoint_every` steps the policy,
optimizer, baseline and random-number states are saved atomically, so `--resume` continues exactly
where the run stopped.

Baselines (what is subtracted from the reward):
  none            0
  moving_average  an exponential moving average of past batch-mean rewards
  batch_mean      the mean reward of the current batch
  rloo            leave-one-out: the mean of the *other* K-1 prompts' rewards on the same question
  learned         a small value network V(question features), trained by squared error
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlprompt_math.checkpoint import (
    load_state,
    optimizer_tensors,
    restore_optimizer,
    save_policy,
    save_state,
)
from rlprompt_math.config import BASELINES, ENTROPY_SCHEDULES, ReinforceConfig
from rlprompt_math.policies import FixedPrompt, PromptPolicy, prompts_for

from .finalists import validate_finalists

__all__ = ["BASELINES", "ENTROPY_SCHEDULES", "NonFiniteError", "ReinforceAgent", "ReinforceConfig", "advantages",
           "entropy_coef_at"]


class NonFiniteError(FloatingPointError):
    """A reward, loss or gradient was NaN or infinite; the message says where."""


def entropy_coef_at(config: ReinforceConfig, step: int) -> float:
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


def advantages(rewards: torch.Tensor, config: ReinforceConfig, state: BaselineState,
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


def _check_finite(name: str, value: torch.Tensor, where: str) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"non-finite {name} at {where}: {value.detach().flatten()[:8].tolist()}")


class ReinforceAgent:
    """Trains a prompt policy on a PromptRefineEnv (or anything with observe/score/problems/vocab)."""

    name = "reinforce"

    def __init__(self, env, policy: PromptPolicy, config: ReinforceConfig, *, run=None,
                 val_problems=None, llm=None):
        config.validate()
        if (policy.prompt_length, policy.vocab_size) != (env.prompt_length, len(env.vocab)):
            raise ValueError(f"the policy writes {policy.prompt_length} tokens of {policy.vocab_size} actions; "
                             f"the env takes {env.prompt_length} of {len(env.vocab)}")
        self.env, self.policy, self.config, self.run = env, policy, config, run
        self.val_problems = list(val_problems or [])
        self.llm = llm if llm is not None else getattr(env, "llm", None)
        optimizer = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[config.optimizer]
        self.optimizer = optimizer(policy.parameters(), lr=config.lr)
        self.value_head = None
        if config.baseline == "learned":
            dim = env.observe(env.problems[:1]).shape[1]
            self.value_head = ValueHead(dim)
            self.value_optimizer = torch.optim.Adam(self.value_head.parameters(), lr=config.value_lr)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.baseline_state = BaselineState()
        self.step = 0
        self.best_val = -math.inf
        self.oracle_pairs = 0
        self.history: list[dict] = []
        # Shared prompts' training rewards, one per question they were scored on (for `finalists`).
        self.prompt_rewards: dict[tuple, list[float]] = {}

    def _observe(self, problems) -> torch.Tensor:
        if not self.policy.uses_observation and self.value_head is None:
            return torch.zeros(len(problems), 1)  # the prompt does not depend on the question
        return torch.as_tensor(self.env.observe(problems), dtype=torch.float32)

    # ---- one update --------------------------------------------------------------------------------

    def update(self) -> dict:
        cfg, step = self.config, self.step
        where = f"step {step}"
        index = self.rng.choice(len(self.env.problems), size=min(cfg.batch_size, len(self.env.problems)),
                                replace=False)
        problems = [self.env.problems[i] for i in index]
        k, m = cfg.prompts_per_question, len(problems)
        obs = self._observe(problems)
        shared = not self.policy.uses_observation
        # Shared prompts: K prompts, each on every question. Otherwise K prompts per question.
        obs_rep = obs[:1].expand(k, -1) if shared else obs.repeat_interleave(k, 0)
        self.policy.train()
        actions = self.policy.sample(obs_rep, temperature=cfg.temperature, top_k=cfg.top_k,
                                     generator=self.generator)
        # Question-major pairs: row i*k + j is (question i, prompt j).
        pair_actions = actions.repeat(m, 1) if shared else actions
        problems_rep = [p for p in problems for _ in range(k)]
        rewards_np, infos = self.env.score(problems_rep, pair_actions.numpy(), batch_label=where)
        self.oracle_pairs += len(problems_rep)
        rewards = torch.as_tensor(rewards_np, dtype=torch.float32).view(m, k)
        _check_finite("reward", rewards, where)

        if shared:
            for row, column in zip(actions.tolist(), rewards.T.tolist()):
                self.prompt_rewards.setdefault(tuple(row), []).extend(column)
            if cfg.normalize_rewards:
                # Each question z-scored across the K prompts before the mean, so every question
                # weighs the same whatever its reward scale; `advantages` then z-scores the K means.
                rewards = zscore(rewards)
            rewards = rewards.mean(0, keepdim=True)  # [1, K]: each prompt's mean over the questions
        values = self.value_head(obs_rep) if self.value_head is not None else None
        adv = advantages(rewards, cfg, self.baseline_state, values).view(-1)
        log_prob, entropy = self.policy.log_prob(obs_rep, actions)
        _check_finite("log-probability", log_prob, where)
        coef = entropy_coef_at(cfg, step)
        loss = -(adv.detach() * log_prob).mean() - coef * entropy.mean()
        _check_finite("loss", loss, f"{where} (advantage mean {adv.mean():.4g}, entropy {entropy.mean():.4g})")
        self.optimizer.zero_grad()
        loss.backward()
        for name, parameter in self.policy.named_parameters():
            if parameter.grad is not None:
                _check_finite(f"gradient of {name}", parameter.grad, where)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
        self.optimizer.step()
        if self.value_head is not None:
            value_loss = ((values - rewards.reshape(-1)) ** 2).mean()
            _check_finite("value loss", value_loss, where)
            self.value_optimizer.zero_grad()
            value_loss.backward()
            self.value_optimizer.step()

        correct = np.array([info["correct"] for info in infos], dtype=float)
        metrics = {"step": step, "reward": float(rewards_np.mean()), "accuracy": float(correct.mean()),
                   "entropy": float(entropy.detach().mean()) / max(self.policy.prompt_length, 1),
                   "entropy_coef": coef, "loss": float(loss.detach()), "grad_norm": grad_norm,
                   "oracle_pairs": self.oracle_pairs}
        best = int(np.argmax(rewards_np))
        metrics["sample_prompt"] = infos[best]["prompt"]
        if self.run is not None:
            self.run.log_samples(step, infos, rewards_np)
        return metrics

    # ---- validation, checkpoints, the loop -------------------------------------------------------------

    def validate(self) -> float:
        if not self.val_problems:
            return float("nan")
        self.policy.eval()
        obs = self._observe(self.val_problems)
        prompts = prompts_for(self.policy, self.env.vocab, obs)
        _, infos = self.env.score(self.val_problems, None, prompts=prompts, batch_label="validation")
        self.oracle_pairs += len(prompts)
        return float(np.mean([i["correct"] for i in infos]))

    def select_finalist(self) -> dict | None:
        """Validate the best-rewarded sampled prompts; keep one if it beats the best policy so far."""
        if not (self.config.finalists and self.prompt_rewards and self.val_problems
                and not self.policy.uses_observation):
            return None
        scored = validate_finalists(self.env, self.val_problems, self.prompt_rewards, self.config.finalists)
        self.oracle_pairs += sum(f["pairs"] for f in scored)
        best = max(scored, key=lambda f: f["val_accuracy"])
        if best["val_accuracy"] > self.best_val:
            self.best_val = best["val_accuracy"]
            if self.run is not None:
                policy = FixedPrompt(best["prompt"], self.policy.prompt_length, len(self.env.vocab),
                                     actions=best["actions"])
                save_policy(self.run.path / "policy_best.safetensors", policy, self.env.vocab, self.llm,
                            step=self.step, val_accuracy=self.best_val)
            best = {**best, "kept": True}
        return {"finalists": scored, "chosen": best}

    def state_tensors(self) -> tuple[dict, dict]:
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        opt_t, opt_meta = optimizer_tensors(self.optimizer)
        tensors.update(opt_t)
        tensors["torch_generator"] = self.generator.get_state()
        meta = {"step": self.step, "optimizer": opt_meta, "numpy_rng": self.rng.bit_generator.state,
                "baseline_state": asdict(self.baseline_state), "best_val": self.best_val,
                "oracle_pairs": self.oracle_pairs, "config": asdict(self.config),
                "prompt_rewards": [[list(k), v] for k, v in self.prompt_rewards.items()]}
        if self.value_head is not None:
            tensors.update({f"value.{k}": v for k, v in self.value_head.state_dict().items()})
            v_t, v_meta = optimizer_tensors(self.value_optimizer)
            tensors.update({f"value_{k}": v for k, v in v_t.items()})
            meta["value_optimizer"] = v_meta
        return tensors, meta

    def load_state(self, path) -> None:
        tensors, meta = load_state(path)
        self.policy.load_state_dict({k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")})
        restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.generator.set_state(tensors["torch_generator"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.baseline_state = BaselineState(**meta["baseline_state"])
        self.best_val = meta["best_val"] if meta["best_val"] is not None else -math.inf
        self.oracle_pairs = meta["oracle_pairs"]
        self.step = meta["step"]
        self.prompt_rewards = {tuple(k): list(v) for k, v in meta.get("prompt_rewards", [])}
        if self.value_head is not None:
            self.value_head.load_state_dict({k[len("value."):]: v for k, v in tensors.items() if k.startswith("value.")})
            restore_optimizer(self.value_optimizer,
                              {k[len("value_"):]: v for k, v in tensors.items() if k.startswith("value_optim.")},
                              meta["value_optimizer"])

    def save_checkpoint(self) -> None:
        if self.run is None:
            return
        save_policy(self.run.path / "policy_last.safetensors", self.policy, self.env.vocab, self.llm,
                    step=self.step)
        tensors, meta = self.state_tensors()
        save_state(self.run.path / "state_last.safetensors", tensors, meta)

    def train(self, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        cfg = self.config
        start = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="reinforce", disable=not progress, unit="step")
        while self.step < cfg.steps:
            metrics = self.update()
            last = self.step == cfg.steps - 1
            if self.val_problems and ((cfg.eval_every and (self.step + 1) % cfg.eval_every == 0) or last):
                metrics["val_accuracy"] = self.validate()
                if metrics["val_accuracy"] > self.best_val and self.run is not None:
                    self.best_val = metrics["val_accuracy"]
                    save_policy(self.run.path / "policy_best.safetensors", self.policy, self.env.vocab,
                                self.llm, step=self.step, val_accuracy=self.best_val)
            metrics["wall_s"] = time.perf_counter() - start
            self.history.append(metrics)
            if self.run is not None:
                self.run.log_metrics(metrics)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                            H=f"{metrics['entropy']:.2f}", oracle=self.oracle_pairs)
            bar.update(1)
            self.step += 1
            if self.run is not None and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                self.save_checkpoint()
        bar.close()
        finalists = self.select_finalist()
        summary = {"steps": self.step, "oracle_pairs": self.oracle_pairs, "best_val_accuracy": self.best_val,
                   "wall_s": time.perf_counter() - start}
        if finalists:
            summary["finalists"] = finalists
        return summary
