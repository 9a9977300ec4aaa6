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
  2. `losses(problems)`: the route builds prompt embeddings and asks `TransformersEngine.prompt_loss` for the
     negative log-likelihood per target token of each question's target after the assistant header (float32);
  3. backward: only the route's own tensors get gradients (the LLM's weights have
     `requires_grad=False` and no optimizer holds them); a missing or non-finite gradient stops the
     run with a message (a prompt the gradient never reached is the seed project's bug);
  4. clip the gradient norm (`max_grad_norm`) and take an Adam step (`grad_lr`; gumbel: `gumbel_lr`).
The loop around the steps is every agent's (base.py): every `eval_every` steps the route's prompt is
scored by greedy generation on the validation questions through the oracle (`env.score`, the path
every agent and the evaluation use); the best is kept as the run's policy_best. Every
`checkpoint_every` steps the trained tensors, the optimizer and the random-number states are saved,
so `--resume` continues exactly.

Metrics per step: loss (mean NLL per target token), target_likelihood (the target's mean per-token
probability, exp(-NLL), averaged over the questions), grad_norm, forward_passes and backward_passes
(LLM rows: one per question per step; validation decodes are counted in oracle_pairs), step_s.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from rlprompt_math.checkpoint import POLICY_BEST
from rlprompt_math.config import REFERENCE_PROMPTS, AlgorithmConfig, ConfigError, GradientConfig
from rlprompt_math.policies import PromptPolicy
from rlprompt_math.vocab import EMPTY

from .base import Agent, check_finite


def initial_prompt_embeddings(engine, vocab, gradient: GradientConfig, prompt_length: int,
                              generator: torch.Generator) -> torch.Tensor:
    """[L, D] float32: the token embeddings of `init_text` (one row per token), or `prompt_length`
    random rows of the action vocabulary (never the "no token" action)."""
    table = engine.token_embeddings().float().cpu()
    if gradient.soft_init == "text":
        ids = engine.tokenizer(gradient.init_text, add_special_tokens=False)["input_ids"]
    else:
        tokens = [t for t in vocab.token_ids if t != EMPTY]
        picks = torch.randint(0, len(tokens), (prompt_length,), generator=generator)
        ids = [tokens[i] for i in picks.tolist()]
    return table[torch.tensor(ids, dtype=torch.long)].clone()


class DifferentiableAgent(Agent):
    """Base class: subclasses set `self.parameters` (the tensors trained) and `self.optimizer`, and
    define `losses`, `prompt_policy` and `describe`."""

    name = "differentiable"
    trains_by_gradient = True
    reading = ""  # how the summary names `describe()`'s reading of the last prompt (soft prompts: nearest tokens)

    @classmethod
    def check_config(cls, config) -> None:
        config.gradient.validate()
        if config.engine.engine != "transformers":
            raise ConfigError(f"--agent {cls.name} trains by gradients through the frozen LLM, which needs its "
                              "weights in this process: use --engine transformers (the default)")
        if config.policy.shots:
            raise ConfigError(f"--agent {cls.name} trains instruction tokens or embeddings by gradients, not "
                              "exemplar choices: use --shots 0, or --agent reinforce or random for exemplars")

    def step_pairs(self) -> int:
        return 0  # a step is a gradient; --loss-target own's completions ask the cap themselves

    @classmethod
    def training_pairs_planned(cls, config) -> int:
        """None in the steps (a step is a gradient, not a decode); --loss-target own first asks for greedy
        completions under as many prompts as it takes to find targets, which no plan knows."""
        if config.gradient.loss_target == "own":
            raise ValueError("--loss-target own spends oracle pairs on finding its targets until enough are found: "
                             "its budget is known only after the run (summary.json's oracle_pairs)")
        return 0

    def __init__(self, env, config: AlgorithmConfig, gradient: GradientConfig, *, run=None, val_problems=None,
                 engine=None):
        gradient.validate()
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        self.gradient = gradient
        self.forward_passes = 0
        self.backward_passes = 0
        self.parameters: list[torch.Tensor] = []
        self.own_targets: dict[str, str] | None = None  # --loss-target own: problem id -> correct completion

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, config.algorithm, config.gradient, run=run, val_problems=val_problems, engine=engine)

    def initial_prompt(self, probe_problems) -> str:
        return self.describe()

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
            if not todo or not self.affords(len(todo)):  # --max-oracle-pairs: train on the targets found so far
                break
            _, infos = self.env.score(todo, None, prompts=[prompt] * len(todo), batch_label="own targets")
            self.oracle_pairs += len(todo)
            for problem, info in zip(todo, infos):
                if info["correct"] and info["completion"].strip():
                    targets[problem.id] = info["completion"]
        if not targets:
            raise RuntimeError(f"--loss-target own: no greedy completion of {len(chosen)} training questions reached "
                               "its gold answer under --init-text or the reference prompts"
                               + (" that --max-oracle-pairs left room for" if self.stopped else "")
                               + ", so there is nothing to train on; use --loss-target gold or more --target-questions")
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
        batch = self.draw_batch(self.training_problems())
        losses, extra = self.losses(batch)
        loss = losses.mean()
        check_finite("loss", loss, where)
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
            check_finite(f"gradient of tensor {k}", parameter.grad, where)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, cfg.max_grad_norm))
        self.optimizer.step()
        return {"step": self.step, "loss": float(loss.detach()),
                "target_likelihood": float(torch.exp(-losses.detach()).mean()), "grad_norm": grad_norm,
                "forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "oracle_pairs": self.oracle_pairs, "step_s": time.perf_counter() - start, **extra}

    # ---- around the loop: metrics, policy files, the end, state -----------------------------------

    def complete_metrics(self, metrics: dict) -> None:
        metrics["sample_prompt"] = self.describe()
        metrics["oracle_pairs"] = self.oracle_pairs  # with this step's validation decodes

    def progress_postfix(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.3f}", "s": f"{metrics['step_s']:.1f}", "oracle": self.oracle_pairs}

    def policy_metadata(self) -> dict:
        return {"agent": self.name, "reading": self.describe()}

    def finish(self) -> dict:
        if self.run is not None and not (self.run.path / POLICY_BEST).exists():
            self.save_prompt(POLICY_BEST)  # no validation questions: the last is the kept one
        return {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "last_prompt": self.describe(),
                **({"own_targets": len(self.own_targets)} if self.own_targets is not None else {})}

    def extra_state(self) -> tuple[dict, dict]:
        tensors = {f"trained.{k}": p.detach() for k, p in enumerate(self.parameters)}
        meta = {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "own_targets": self.own_targets, "gradient": asdict(self.gradient)}
        return tensors, meta

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        with torch.no_grad():
            for k, parameter in enumerate(self.parameters):
                parameter.copy_(tensors[f"trained.{k}"])
        self.forward_passes, self.backward_passes = meta["forward_passes"], meta["backward_passes"]
        self.own_targets = meta.get("own_targets")
