"""Soft prompts and teacher forcing with gradients for the `transformers` engine.

Soft prompts (prompt embeddings rather than tokens) travel through the text pipeline as a marker
string, `⟦soft-prompt <digest>⟧`, returned by `soft_prompt_text`: `render` places it where
any prompt goes, and `encode` turns it into negative ids that select rows of the registered
embeddings, so generation, teacher forcing and features all take the same path as text prompts.

`prompt_loss` is the differentiable routes' one call with a graph: the answer's teacher-forced loss
with the prompt given as embeddings; its gradient reaches those embeddings, never the weights.
`SoftPrompts` is a mixin of `TransformersEngine`: it uses the engine's `model`, `tokenizer`, `device`,
`dtype`, `hidden_size`, `stats`, `render`, `_split_ids`, `_positions` and the soft-prompt registry
(`_soft_spans`, `_soft_table`).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

SOFT_PROMPT_MARK = "\u27e6soft-prompt "
SOFT_PROMPT_END = "\u27e7"
PROMPT_SLOT = "\u27e6prompt\u27e7"  # where `prompt_slot_ids` finds the prompt in a rendered text


class SoftPrompts:
    """Prompt embeddings where the template puts the prompt: registered as marker texts, or given to
    `prompt_loss` directly."""

    def soft_prompt_text(self, embeddings: torch.Tensor) -> str:
        """Register prompt embeddings [L, D]; returns the marker that stands for them as a prompt.

        Pass the marker wherever a prompt text goes (`render`, the oracle, evaluation): the rows are
        spliced in as input embeddings at that place. The marker names a digest of the values, so a
        changed soft prompt is a new prompt (the greedy cache stays correct).
        """
        rows = embeddings.detach().float().cpu().contiguous()
        if rows.dim() != 2 or rows.shape[1] != self.hidden_size or not len(rows):
            raise ValueError(f"soft prompt embeddings must be [L >= 1, {self.hidden_size}], got {tuple(rows.shape)}")
        digest = hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]
        marker = f"{SOFT_PROMPT_MARK}{digest}{SOFT_PROMPT_END}"
        if marker not in self._soft_spans:
            # A copy: in fp32 on the CPU `.to` returns the caller's own storage, which an optimizer then moves in
            # place under a marker that names the values it had.
            new = rows.to(device=self.device, dtype=self.dtype, copy=True)
            first = 0 if self._soft_table is None else len(self._soft_table)
            self._soft_table = new if self._soft_table is None else torch.cat([self._soft_table, new])
            self._soft_spans[marker] = (first, len(rows))
        return marker

    def _inputs(self, ids: torch.Tensor) -> dict:
        """The model's input for token rows: `input_ids`, or `inputs_embeds` when soft-prompt ids are in."""
        soft = ids < 0
        if not bool(soft.any()):
            return {"input_ids": ids}
        embeds = self.model.get_input_embeddings()(ids.clamp(min=0))
        rows = self._soft_table[(-ids - 1).clamp(min=0)]
        return {"inputs_embeds": torch.where(soft.unsqueeze(-1), rows, embeds)}

    def prompt_slot_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the prompt in the text the LLM sees for `question` (`render`)."""
        return self._split_ids(self.render(PROMPT_SLOT, question), PROMPT_SLOT)

    def prompt_loss(self, prompt_embeds: torch.Tensor, questions: Sequence[str], answers: Sequence[str], *,
                    reduction: str = "mean") -> torch.Tensor:
        """Teacher-forced negative log-likelihood [B] (float32) of `answers[i]` right after the assistant
        header, with the prompt given as embeddings where the template puts it; differentiable with
        respect to `prompt_embeds` ([L, D] shared by every question, or [B, L, D]).

        Nothing else gets a gradient (the weights have `requires_grad=False`). The model runs in its
        own dtype; the log-softmax and the loss are computed in float32, so fp16/bf16 models do not
        overflow here. `reduction="mean"` divides by the answer's token count.
        """
        if reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        if len(questions) != len(answers) or not len(questions):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        n = len(questions)
        if prompt_embeds.dim() == 2:
            prompt_embeds = prompt_embeds.unsqueeze(0).expand(n, -1, -1)
        if prompt_embeds.shape[0] != n or prompt_embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"prompt embeddings {tuple(prompt_embeds.shape)} for {n} questions of hidden size "
                             f"{self.hidden_size}")
        table = self.model.get_input_embeddings()
        prompt_embeds = prompt_embeds.to(device=self.device, dtype=self.dtype)
        rows, targets = [], []
        for question, answer in zip(questions, answers):
            head, tail = self.prompt_slot_ids(question)
            target = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"the answer {answer!r} has no tokens")
            rows.append((head, tail + target))
            targets.append(target)
        width = max(len(h) + prompt_embeds.shape[1] + len(r) for h, r in rows)
        mask = torch.zeros((n, width), dtype=torch.long, device=self.device)
        embeds = []
        for i, (head, rest) in enumerate(rows):
            row = torch.cat([table(torch.tensor(head, dtype=torch.long, device=self.device)), prompt_embeds[i],
                             table(torch.tensor(rest, dtype=torch.long, device=self.device))])
            missing = width - len(row)
            embeds.append(torch.nn.functional.pad(row, (0, 0, missing, 0)))  # left padding
            mask[i, missing:] = 1
        keep = max(len(t) for t in targets) + 1  # logits only where answer tokens are predicted
        logits = self.model(inputs_embeds=torch.stack(embeds), attention_mask=mask,
                            position_ids=self._positions(mask), use_cache=False, logits_to_keep=keep).logits
        self.stats.forward_rows += n
        logprobs = torch.log_softmax(logits.float()[:, :-1], -1)  # position j predicts token j + 1
        losses = []
        for i, target in enumerate(targets):
            ids = torch.tensor(target, device=self.device).view(-1, 1)
            nll = -logprobs[i, keep - 1 - len(target):].gather(-1, ids).sum()
            losses.append(nll / len(target) if reduction == "mean" else nll)
        return torch.stack(losses)
