"""Straight-through Gumbel-softmax: the seed's Refiner (or an unconditioned policy) trained end to end.

The policy gives logits over the action vocabulary for every slot (the Refiner from the question's
features). Each step adds Gumbel noise, takes the hard one-hot of the argmax in the forward pass
(a real token's embedding row per slot) and the gradient of the soft relaxation
softmax((logits + g) / tau) in the backward pass; the loss is the same teacher-forced NLL of the
target (`--loss-target`). The temperature tau falls geometrically from `--gumbel-tau` to
`--gumbel-tau-end` over the run. The "no token" action is masked out (its embedding would
not be "nothing"), and its logit bias is set far below the others so the greedy prompt never picks
it either. At evaluation the policy is an ordinary discrete policy: its greedy prompts are scored.
"""

from __future__ import annotations

import torch

from rlprompt_math.config import ConfigError
from rlprompt_math.vocab import EMPTY

from .base import policy_for
from .differentiable import DifferentiableAgent

NEVER = -1e4  # the logit bias of the masked "no token" action


def tau_at(gradient, step: int, steps: int) -> float:
    progress = step / max(steps - 1, 1)
    return gradient.gumbel_tau * (gradient.gumbel_tau_end / gradient.gumbel_tau) ** progress


class GumbelAgent(DifferentiableAgent):
    name = "gumbel"

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.policy.policy == "autoregressive":
            raise ConfigError("--agent gumbel trains --policy unconditioned or refiner (the autoregressive "
                              "policy samples slot by slot; use --agent reinforce for it)")

    def __init__(self, env, policy, config, gradient, **kwargs):
        super().__init__(env, config, gradient, **kwargs)
        if policy.autoregressive or policy.kind not in ("unconditioned", "refiner"):
            raise ValueError(f"the gumbel agent trains unconditioned or refiner policies, not {policy.kind}")
        if (policy.prompt_length, policy.vocab_size) != (env.prompt_length, len(env.vocab)):
            raise ValueError(f"the policy writes {policy.prompt_length} tokens of {policy.vocab_size} actions; "
                             f"the env takes {env.prompt_length} of {len(env.vocab)}")
        self.policy = policy
        ids = torch.tensor(env.vocab.token_ids)
        self.empty = ids == EMPTY
        self.rows = self.engine.token_embeddings()[ids.clamp(min=0)].float().cpu()  # [V, D]
        self.rows[self.empty] = 0.0
        bias = policy.slot_logits if policy.kind == "unconditioned" else policy.slot_bias
        with torch.no_grad():
            bias[:, self.empty] = NEVER
        self.parameters = list(policy.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=gradient.gumbel_lr)
        self._last_actions: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, policy_for(config, env, engine), config.algorithm, config.gradient, run=run,
                   val_problems=val_problems, engine=engine)

    def initial_prompt(self, probe_problems):
        probe = list(probe_problems)[:1]
        return str(self.greedy_prompts(probe, self.policy)[0]) if probe else None

    def losses(self, problems):
        tau = tau_at(self.gradient, self.step, self.config.steps)
        self.policy.train()
        logits = self.policy.logits(self._observe(self.policy, problems)).masked_fill(self.empty, float("-inf"))
        uniform = torch.rand(logits.shape, generator=self.generator).clamp(1e-9, 1 - 1e-9)
        soft = torch.softmax((logits - torch.log(-torch.log(uniform))) / tau, -1)
        index = soft.argmax(-1)
        hard = torch.nn.functional.one_hot(index, soft.shape[-1]).to(soft.dtype)
        onehot = hard - soft.detach() + soft  # forward: the hard choice; backward: the soft gradient
        self._last_actions = index.detach()
        prompt = onehot @ self.rows  # [B, T, D]: the chosen tokens' embedding rows
        losses = self.engine.prompt_loss(prompt, [p.question for p in problems], self.targets(problems))
        return losses, {"gumbel_tau": tau}

    def prompt_policy(self):
        return self.policy

    def describe(self) -> str:
        if self._last_actions is None:
            return ""
        return self.env.vocab.decode(self._last_actions[0].tolist())  # the first question's sampled prompt
