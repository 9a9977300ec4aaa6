"""The `transformers` engine: the frozen LLM in this process (the interface is `engines.base.Engine`).

`TransformersEngine` wraps a Hugging Face causal LM and its tokenizer. It never trains: the weights are
in eval mode with `requires_grad=False`, the oracle's calls run under `torch.inference_mode()`, and
nothing here hands parameters to an optimizer. Policies read the token-embedding matrix and the
hidden-state features; environments call `render`, `generate` and `answer_logprobs`. The
differentiable routes call `prompt_loss`, the one call with a graph: its gradient reaches the
prompt embeddings it is given, never the weights. Soft prompts (embeddings instead of tokens) are
registered with `soft_prompt_text` and then used as any prompt text (see SOFT_PROMPT_MARK).

  * `loading`       -- what `TransformersEngine.load` accepts, the default GGUF, device and dtype;
  * `decoding`      -- the continuous-batching decoder (`generate`'s work) and its batching helpers;
  * `prefixes`      -- which prompt tokens a prefill shares between rows (computed once);
  * `soft_prompts`  -- the soft-prompt registry and `prompt_loss`;
  * here            -- the engine: construction, encoding, teacher-forced log-probabilities, features.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import torch

from ...config import ENGINE_CACHE_SIZE
from ..base import Engine
from .decoding import BatchedDecoding
from .loading import ModelLoadError, contiguous_input, load_model
from .prefixes import SHARING_MODES
from .soft_prompts import SOFT_PROMPT_END, SOFT_PROMPT_MARK, SoftPrompts

__all__ = ["ModelLoadError", "TransformersEngine"]


class TransformersEngine(SoftPrompts, BatchedDecoding, Engine):
    """The `transformers` engine: a frozen causal LM in this process (CPU or CUDA), which answers for the
    oracle, gives question features and, for the gradient routes, a differentiable loss."""

    kind = "transformers"
    records_traces = True

    def __init__(self, model, tokenizer, *, name: str, template: str | None = None,
                 cache_size: int = ENGINE_CACHE_SIZE, prefix_sharing: str = "groups"):
        super().__init__(tokenizer, name=name, template=template, cache_size=cache_size)
        if prefix_sharing not in SHARING_MODES:
            raise ValueError(f"prefix_sharing {prefix_sharing!r}: choose one of {', '.join(SHARING_MODES)}")
        self.prefix_sharing = prefix_sharing  # which shared prompt tokens a prefill computes once (prefixes.py)
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(contiguous_input)
        self._line_breaks: frozenset[int] | None = None
        # Registered soft prompts: marker -> (first row, rows) of `_soft_table` [N, D] (model dtype).
        self._soft_spans: dict[str, tuple[int, int]] = {}
        self._soft_table: torch.Tensor | None = None

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, device: str = "auto",
             dtype: str | torch.dtype = "auto", load_in_8bit: bool = False,
             template: str | None = None, trust_remote_code: bool = False) -> "TransformersEngine":
        """Load a frozen LLM. See `loading`'s docstring for what `model` may be."""
        hf_model, tokenizer, name = load_model(model, device=device, dtype=dtype, load_in_8bit=load_in_8bit,
                                               trust_remote_code=trust_remote_code)
        return cls(hf_model, tokenizer, name=name, template=template)

    # ---- identity and access for policies -----------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def token_embeddings(self) -> torch.Tensor:
        """The input token-embedding matrix [V, D], detached (policies score slots against it)."""
        return self.model.get_input_embeddings().weight.detach()

    # ---- text the LLM sees -------------------------------------------------------------------

    def _needs_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered texts; special tokens are added only where the text lacks them
        (a chat-templated text already holds its BOS). A soft prompt's marker (`soft_prompt_text`)
        becomes one negative id per prompt row: -(k + 1) selects row k of the registered table."""
        out = []
        for text in texts:
            if SOFT_PROMPT_MARK not in text:
                out.append(self.tokenizer(text, add_special_tokens=self._needs_bos(text))["input_ids"])
                continue
            start = text.index(SOFT_PROMPT_MARK)
            end = text.find(SOFT_PROMPT_END, start)
            marker = text[start:end + 1] if end >= 0 else ""
            if marker not in self._soft_spans:
                raise ValueError(f"{marker or text[start:start + 40]!r} is not a soft prompt registered with "
                                 f"{self.name} (soft prompts belong to the model they were trained on)")
            head, tail = self._split_ids(text, marker)
            first, rows = self._soft_spans[marker]
            out.append(head + [-(first + j + 1) for j in range(rows)] + tail)
        return out

    def _split_ids(self, text: str, marker: str) -> tuple[list[int], list[int]]:
        """Token ids of `text` before and after the one occurrence of `marker`."""
        if text.count(marker) != 1:
            raise ValueError(f"the template must place the prompt exactly once (template {self.template!r})")
        before, after = text.split(marker)
        head = self.tokenizer(before, add_special_tokens=self._needs_bos(text))["input_ids"]
        return head, self.tokenizer(after, add_special_tokens=False)["input_ids"]

    # ---- teacher forcing -----------------------------------------------------------------------

    @torch.inference_mode()
    def answer_logprobs(self, texts: Sequence[str], answers: Sequence[str], *, reduction: str = "sum",
                        batch_size: int = 32) -> list[float]:
        """Teacher-forced log-likelihood of `answers[i]` right after `texts[i]`.

        `reduction="sum"` gives log p(answer | text); `"mean"` divides by the answer's token count.
        The answer is tokenized on its own and appended to the text's ids, so the scored tokens
        are exactly the answer's.
        """
        from transformers import DynamicCache

        if reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        if len(texts) != len(answers):
            raise ValueError(f"{len(texts)} texts but {len(answers)} answers")
        start = time.perf_counter()
        contexts = self.encode(texts)
        targets = [self.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        rows = [c + t for c, t in zip(contexts, targets)]
        results = [0.0] * len(rows)
        order = self._batch_order(rows, keep=1 + max((len(t) for t in targets), default=0))
        for batch in (order[k:k + batch_size] for k in range(0, len(order), batch_size)):
            keep = max(len(targets[i]) for i in batch) + 1  # logits only where answer tokens are predicted
            logits, _, _ = self._forward_rows([rows[i] for i in batch], DynamicCache(), keep)
            logprobs = torch.log_softmax(logits.float()[:, :-1], -1)  # position j predicts token j + 1
            self.stats.forward_rows += len(batch)
            for k, i in enumerate(batch):
                n = len(targets[i])
                if n == 0:
                    results[i] = 0.0
                    continue
                # The answer is the last n tokens of the row; the last n kept positions predict them.
                answer = torch.tensor(targets[i], device=logprobs.device).view(-1, 1)
                picked = logprobs[k, keep - 1 - n:].gather(-1, answer).sum().item()
                results[i] = picked / n if reduction == "mean" else picked
        self.stats.engine_seconds += time.perf_counter() - start
        return results

    # ---- features -------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: policies train on these features
    def features(self, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        """Last-layer hidden states mean-pooled over real tokens: [B, D] float32 on the CPU."""
        encoded = self.encode(texts)
        out = torch.zeros((len(encoded), self.hidden_size), dtype=torch.float32)
        for batch in self._length_sorted_batches([len(e) for e in encoded], batch_size):
            ids, mask = self._pad_left([encoded[i] for i in batch])
            hidden = self.model(**self._inputs(ids), attention_mask=mask, position_ids=self._positions(mask),
                                output_hidden_states=True).hidden_states[-1].float()
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            out[batch] = pooled.cpu()
            self.stats.forward_rows += len(batch)
        return out
