"""Soft prompts (EmbedGrad, seed 000): the prompt's input embeddings, trained by gradient.

The prompt starts as the token embeddings of a text prompt (`--init-text`, default "Let's think step
by step.") or as random rows of the action vocabulary (`--soft-init random`). The rows take the
place the template gives the prompt (after the question in the user message, by default), and the
loss is the teacher-forced NLL of the target (`--loss-target`) after the assistant header; its gradient reaches
the prompt embeddings only. The result is a `SoftPrompt` policy: greedy generation with the
embeddings spliced in, scored by the same oracle and evaluation as any prompt. Its nearest-token
reading (cosine, over the whole vocabulary) is logged as sample_prompt and saved with the policy.
"""

from __future__ import annotations

import torch

from rlprompt_math.policies import SoftPrompt

from .differentiable import DifferentiableAgent, initial_prompt_embeddings


class SoftPromptAgent(DifferentiableAgent):
    name = "soft-prompt"
    names_policy = False
    reading = "nearest tokens"

    def __init__(self, env, config, gradient, **kwargs):
        super().__init__(env, config, gradient, **kwargs)
        init = initial_prompt_embeddings(self.engine, env.vocab, gradient, env.prompt_length, self.generator)
        self.policy = SoftPrompt(self.engine, init, len(env.vocab))
        self.parameters = [self.policy.embeddings]
        self.optimizer = torch.optim.Adam(self.parameters, lr=gradient.grad_lr)

    def losses(self, problems):
        return self.engine.prompt_loss(self.policy.embeddings, [p.question for p in problems],
                                    self.targets(problems)), {}

    def prompt_policy(self):
        return self.policy

    def describe(self) -> str:
        return self.policy.reading()
