"""PEZ (hard prompts made easy): a continuous prompt projected onto vocabulary rows at every step.

The agent keeps a continuous copy P [L, D] (started like the soft prompt: `--init-text` or random
action-vocabulary rows). Each step projects every row of P to its nearest row (cosine) of the action
vocabulary (`--action-vocab`; the "no token" action is never chosen), takes the loss at the
projection (the forward pass sees real token embeddings), and applies the projection's gradient
to P. The result is the projected prompt: a fixed discrete prompt (its action indices and text),
saved and evaluated like any discrete prompt, so it transfers to other models as text.

Note: training feeds the projected token ids themselves; evaluation re-tokenises the prompt's text,
which for the default "words" vocabulary (one space-prefixed token per word) gives the same ids.
"""

from __future__ import annotations

import torch

from rlprompt_math.policies import FixedPrompt, nearest_tokens
from rlprompt_math.vocab import EMPTY

from .differentiable import DifferentiableAgent, initial_prompt_embeddings


class PezAgent(DifferentiableAgent):
    name = "pez"
    names_policy = False

    def __init__(self, env, config, gradient, **kwargs):
        super().__init__(env, config, gradient, **kwargs)
        vocab = env.vocab
        self.candidates = [i for i, t in enumerate(vocab.token_ids) if t != EMPTY]  # action indices
        table = self.engine.token_embeddings().float().cpu()
        self.rows = table[torch.tensor([vocab.token_ids[i] for i in self.candidates])]  # [C, D]
        init = initial_prompt_embeddings(self.engine, vocab, gradient, env.prompt_length, self.generator)
        self.prompt = torch.nn.Parameter(init)
        self.parameters = [self.prompt]
        self.optimizer = torch.optim.Adam(self.parameters, lr=gradient.grad_lr)
        self._projected: torch.Tensor | None = None

    def actions(self) -> list[int]:
        """The projection: the action index of the nearest action-vocabulary row of each prompt row."""
        return [self.candidates[i] for i in nearest_tokens(self.prompt, self.rows)]

    def losses(self, problems):
        index = torch.tensor(nearest_tokens(self.prompt, self.rows))
        self._projected = self.rows[index].clone().requires_grad_(True)
        return self.engine.prompt_loss(self._projected, [p.question for p in problems],
                                    self.targets(problems)), {}

    def transfer_gradient(self) -> None:
        # The straight-through step of PEZ: d loss / d projection, applied to the continuous copy.
        self.prompt.grad = None if self._projected.grad is None else self._projected.grad.clone()

    def prompt_policy(self):
        actions = self.actions()
        return FixedPrompt(self.env.vocab.decode(actions), len(actions), len(self.env.vocab), actions=actions)

    def describe(self) -> str:
        return self.env.vocab.decode(self.actions())
