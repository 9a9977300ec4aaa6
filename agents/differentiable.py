"""The loop the differentiable routes share (soft prompt, PEZ, Gumbel-softmax): a training step is a
gradient of a target's teacher-forced likelihood through the frozen LLM.

The target (`--loss-target`) is the gold answer alone, right after the assistant header, or the
model's own completion that reached the gold answer. The first rewards answering at once, which
SmolLM2-135M cannot do for most sums: it answers correctly mainly after writing its own working
("27/9 is 3."). So `own` first asks the oracle for greedy completions of `--target-questions` training
questions, under --init-text and then each reference prompt for the questions still unsolved, keeps
the first correct one per question, and trains on those questions only (the pairs are counted in
oracle_pairs; the targets are saved with the state, so resume asks for none).

Each step:
  1. draw `batch_size` training questions (numpy generator seeded by the run's seed);
  2. `losses(problems)`: the route builds prompt embeddings and asks `FrozenLLM.prompt_loss` for the
     negative log-likelihood per target token of each question's target after the assistant header (float32);
  3. backward: only the route's own tensors get gradients (the LLM's weights have
     `requires_grad=False` and no optimizer holds them); a missing or non-finite gradient stops the
     run with a message (a prompt the gradient never reached is the seed project's bug);
  4. clip the gradient norm (`max_grad_norm`) and take an Adam step (`grad_lr`; gumbel: `gumbel_lr`).
Every `eval_every` steps the route's prompt is scored by greedy generation on the validation
questions through the oracle (`env.score`, the path every agent and the evaluation use); the best is
kept as `policy_best.safetensors`. Every `checkpoint_every` steps the trained tensors, the optimizer
and the random-number states are saved, so `--resume` continues exactly.

Metrics per step: loss (mean NLL per target token), reward (the target's mean per-token
probability, exp(-NLL), averaged over the questions), grad_norm, forward_passes and backward_passes
(LLM rows: one per question per step; validation decodes are counted in oracle_pairs), step_s.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch

from rlprompt_math.checkpoint import load_state, optimizer_tensors, restore_optimizer, save_policy, save_state
from rlprompt_math.config import REFERENCE_PROMPTS, GradientConfig, ReinforceConfig
from rlprompt_math.policies import PromptPolicy, prompts_for
from rlprompt_math.vocab import EMPTY

from .reinforce import NonFiniteError


def _check_finite(name: str, value: torch.Tensor, where: str) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"non-finite {name} at {where}: {value.detach().flatten()[:8].tolist()}")


def initial_prompt_embeddings(llm, vocab, gradient: GradientConfig, prompt_length: int,
                              generator: torch.Generator) -> torch.Tensor:
    """[L, D] float32: the token embeddings of `init_text` (one row per token), or `prompt_length`
    random rows of the action vocabulary (never the "no token" action)."""
    table = llm.token_embeddings().float().cpu()
    if gradient.soft_init == "text":
        ids = llm.tokenizer(gradient.init_text, add_special_tokens=False)["input_ids"]
    else:
        tokens = [t for t in vocab.token_ids if t != EMPTY]
        picks = torch.randint(0, len(tokens), (prompt_length,), generator=generator)
        ids = [tokens[i] for i in picks.tolist()]
    return table[torch.tensor(ids, dtype=torch.long)].clone()


class DifferentiableAgent:
    """Base class: subclasses set `self.parameters` (the tensors trained) and `self.optimizer`, and
    define `losses`, `prompt_policy` and `describe`."""

    name = "differentiable"

    def __init__(self, env, config: ReinforceConfig, gradient: GradientConfig, *, run=None, val_problems=None,
                 llm=None):
        gradient.validate()
        self.env, self.config, self.gradient, self.run = env, config, gradient, run
        self.llm = llm if llm is not None else env.llm
        self.val_problems = list(val_problems or [])
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.best_val = -math.inf
        self.oracle_pairs = 0
        self.forward_passes = 0
        self.backward_passes = 0
        self.history: list[dict] = []
        self.parameters: list[torch.Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.own_targets: dict[str, str] | None = None  # --loss-target own: problem id -> correct completion

    # ---- what the loss teacher-forces ------------------------------------------------------------

    def targets(self, problems) -> list[str]:
        """The text each question's loss teacher-forces after the assistant header."""
        if self.gradient.loss_target == "gold":
            return [p.answer for p in problems]
        return [self.own_targets[p.id] for p in problems]

    def training_problems(self) -> list:
        """The questions a step draws from: all of the training split, or (own) those with a target."""
        if self.gradient.loss_target == "gold":
            return self.env.problems
        if self.own_targets is None:
            self.own_targets = self.collect_own_targets()
        return [p for p in self.env.problems if p.id in self.own_targets]

    def collect_own_targets(self) -> dict[str, str]:
        """Greedy completions that reached the gold answer, one per question (see the module docstring)."""
        problems = self.env.problems
        # Its own random stream, so the batches drawn later follow the run's seed as with gold targets.
        rng = np.random.default_rng([self.config.seed, 1])
        index = rng.choice(len(problems), size=min(self.gradient.target_questions, len(problems)), replace=False)
        chosen = [problems[i] for i in index]
        targets: dict[str, str] = {}
        for prompt in dict.fromkeys([self.gradient.init_text, *REFERENCE_PROMPTS]):
            todo = [p for p in chosen if p.id not in targets]
            if not todo:
                break
            _, infos = self.env.score(todo, None, prompts=[prompt] * len(todo), batch_label="own targets")
            self.oracle_pairs += len(todo)
            for problem, info in zip(todo, infos):
                if info["correct"] and info["completion"].strip():
                    targets[problem.id] = info["completion"]
        if not targets:
            raise RuntimeError(f"--loss-target own: no greedy completion of {len(chosen)} training questions reached "
                               "its gold answer under --init-text or the reference prompts, so there is nothing to "
                               "train on; use --loss-target gold or more --target-questions")
        return targets

    # ---- what a route defines -------------------------------------------------------------------

    def losses(self, problems) -> tuple[torch.Tensor, dict]:
        """(NLL per question [B] with a graph to the trained tensors, extra metrics)."""
        raise NotImplementedError

    def transfer_gradient(self) -> None:
        """Move gradients onto `self.parameters` where the loss was taken elsewhere (PEZ)."""

    def prompt_policy(self) -> PromptPolicy:
        """The prompt source that validation scores and the policy files hold."""
        raise NotImplementedError

    def describe(self) -> str:
        """The current prompt as a person reads it (metrics' sample_prompt, the summary)."""
        raise NotImplementedError

    # ---- one update -----------------------------------------------------------------------------

    def update(self) -> dict:
        cfg, where = self.config, f"step {self.step}"
        start = time.perf_counter()
        problems = self.training_problems()
        index = self.rng.choice(len(problems), size=min(cfg.batch_size, len(problems)), replace=False)
        batch = [problems[i] for i in index]
        losses, extra = self.losses(batch)
        loss = losses.mean()
        _check_finite("loss", loss, where)
        if not loss.requires_grad:
            raise RuntimeError(f"no gradient reached the prompt at {where}: the loss does not depend on any trained "
                               "tensor (the graph from the prompt to the loss is cut)")
        self.optimizer.zero_grad()
        loss.backward()
        self.forward_passes += len(batch)
        self.backward_passes += len(batch)
        self.transfer_gradient()
        for k, parameter in enumerate(self.parameters):
            if parameter.grad is None:
                raise RuntimeError(f"no gradient reached the trained tensor {k} at {where}: the graph from the "
                                   "prompt to the loss is cut")
            _check_finite(f"gradient of tensor {k}", parameter.grad, where)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, cfg.max_grad_norm))
        self.optimizer.step()
        return {"step": self.step, "loss": float(loss.detach()),
                "reward": float(torch.exp(-losses.detach()).mean()), "grad_norm": grad_norm,
                "forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "oracle_pairs": self.oracle_pairs, "step_s": time.perf_counter() - start, **extra}

    # ---- validation, checkpoints, the loop -----------------------------------------------------

    def _observe(self, policy: PromptPolicy, problems) -> torch.Tensor:
        if not policy.uses_observation:
            return torch.zeros(len(problems), 1)
        return torch.as_tensor(self.env.observe(problems), dtype=torch.float32)

    def validate(self) -> float:
        """Greedy accuracy of the current prompt on the validation questions (the oracle's path)."""
        if not self.val_problems:
            return float("nan")
        policy = self.prompt_policy().eval()
        prompts = prompts_for(policy, self.env.vocab, self._observe(policy, self.val_problems))
        _, infos = self.env.score(self.val_problems, None, prompts=prompts, batch_label="validation")
        self.oracle_pairs += len(prompts)
        return float(np.mean([i["correct"] for i in infos]))

    def save_prompt(self, name: str, **extra) -> None:
        if self.run is not None:
            save_policy(self.run.path / name, self.prompt_policy(), self.env.vocab, self.llm, step=self.step,
                        agent=self.name, reading=self.describe(), **extra)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {f"trained.{k}": p.detach() for k, p in enumerate(self.parameters)}

    def state_tensors(self) -> tuple[dict, dict]:
        tensors = self.trained_tensors()
        opt_t, opt_meta = optimizer_tensors(self.optimizer)
        tensors.update(opt_t)
        tensors["torch_generator"] = self.generator.get_state()
        meta = {"step": self.step, "agent": self.name, "optimizer": opt_meta,
                "numpy_rng": self.rng.bit_generator.state, "best_val": self.best_val,
                "oracle_pairs": self.oracle_pairs, "forward_passes": self.forward_passes,
                "backward_passes": self.backward_passes, "own_targets": self.own_targets, "config": asdict(self.config),
                "gradient": asdict(self.gradient)}
        return tensors, meta

    def load_state(self, path) -> None:
        tensors, meta = load_state(path)
        if meta.get("agent") != self.name:
            raise ValueError(f"{path} holds a {meta.get('agent')} run, not {self.name}")
        with torch.no_grad():
            for k, parameter in enumerate(self.parameters):
                parameter.copy_(tensors[f"trained.{k}"])
        restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.generator.set_state(tensors["torch_generator"])
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.best_val = meta["best_val"] if meta["best_val"] is not None else -math.inf
        self.oracle_pairs, self.step = meta["oracle_pairs"], meta["step"]
        self.forward_passes, self.backward_passes = meta["forward_passes"], meta["backward_passes"]
        self.own_targets = meta.get("own_targets")

    def save_checkpoint(self) -> None:
        if self.run is None:
            return
        self.save_prompt("policy_last.safetensors")
        tensors, meta = self.state_tensors()
        save_state(self.run.path / "state_last.safetensors", tensors, meta)

    def train(self, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        cfg = self.config
        start = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, disable=not progress, unit="step")
        while self.step < cfg.steps:
            metrics = self.update()
            last = self.step == cfg.steps - 1
            if self.val_problems and ((cfg.eval_every and (self.step + 1) % cfg.eval_every == 0) or last):
                metrics["val_accuracy"] = self.validate()
                if metrics["val_accuracy"] > self.best_val:
                    self.best_val = metrics["val_accuracy"]
                    self.save_prompt("policy_best.safetensors", val_accuracy=self.best_val)
            metrics["sample_prompt"] = self.describe()
            metrics["oracle_pairs"] = self.oracle_pairs
            metrics["wall_s"] = time.perf_counter() - start
            self.history.append(metrics)
            if self.run is not None:
                self.run.log_metrics(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", s=f"{metrics['step_s']:.1f}", oracle=self.oracle_pairs)
            bar.update(1)
            self.step += 1
            if self.run is not None and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                self.save_checkpoint()
        bar.close()
        if self.run is not None and not (self.run.path / "policy_best.safetensors").exists():
            self.save_prompt("policy_best.safetensors")  # no validation questions: the last is the kept one
        return {"steps": self.step, "oracle_pairs": self.oracle_pairs, "best_val_accuracy": self.best_val,
                "forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "wall_s": time.perf_counter() - start, "last_prompt": self.describe(),
                **({"own_targets": len(self.own_targets)} if self.own_targets is not None else {})}
