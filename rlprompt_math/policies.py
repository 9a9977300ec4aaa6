"""Prompt policies: distributions over `prompt_length` tokens of an action vocabulary.

The seed project's Refiner (hidden states -> pooled -> MLP -> token logits -> argmax) could not
train because argmax has no gradient. Here every policy is a *distribution*: the agent samples
prompts, the oracle grades them, and REINFORCE raises the log-probability of the prompts that
scored well. No gradient ever passes through the tokens or the LLM.

Policies (all start at, or near, the uniform distribution, so early exploration is broad):
  refiner         question features -> MLP -> one vector per slot, scored against the frozen token
                  embeddings of the action vocabulary (tied logits, as RLPrompt does through the LM
                  head), plus a per-slot bias. Never a D x (T*V) layer.
  autoregressive  a GRU over the prompt so far, started from the question features: each token is
                  conditioned on the question and on the tokens before it (RLPrompt-style).
  unconditioned   one learned categorical per slot: the same prompt for every question (BDPL-style).
  fixed           a given prompt text; nothing to learn (the `fixed`, `random` and `pez` agents' result).
  soft            prompt embeddings, not tokens (the `soft-prompt` agent's result, EmbedGrad): its
                  "text" is the frozen LLM's marker for them (`TransformersEngine.soft_prompt_text`), which the
                  LLM turns back into the embeddings wherever the template puts the prompt.

Every policy is a prompt source: `prompts(obs, vocab)` gives the greedy prompt text per observation,
which is what validation, finalists and evaluation score; a fixed prompt returns its text.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical

from .config import POLICY_KINDS, PolicyConfig
from .vocab import EMPTY, ActionVocab

__all__ = ["POLICY_KINDS", "AutoregressiveRefiner", "FixedPrompt", "PromptPolicy", "Refiner", "SoftPrompt",
           "Unconditioned", "build_policy", "nearest_tokens", "prompts_for"]


def _tied_embeddings(engine, vocab: ActionVocab) -> torch.Tensor:
    """Unit-norm frozen embeddings of the action vocabulary's tokens, [V, E] float32."""
    ids = torch.tensor(vocab.token_ids)
    emb = engine.token_embeddings()[ids.clamp(min=0)].float().cpu()
    emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    emb[ids == EMPTY] = 0.0  # the "no token" action: scored by its bias alone
    return emb


class PromptPolicy(nn.Module):
    """Base class. Subclasses define `logits(obs, actions=None) -> [B, T, V]`.

    For factorised policies the logits do not depend on `actions`; the autoregressive policy uses
    `actions` (teacher forcing) to score given prompts, and samples slot by slot.
    """

    kind = "base"
    autoregressive = False
    uses_observation = True  # False: the agent need not ask the engine for question features

    def __init__(self, prompt_length: int, vocab_size: int):
        super().__init__()
        self.prompt_length = prompt_length
        self.vocab_size = vocab_size

    def config(self) -> dict:
        return {"kind": self.kind, "prompt_length": self.prompt_length, "vocab_size": self.vocab_size}

    @staticmethod
    def _filter(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
        logits = logits / max(temperature, 1e-6)
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits

    def sample(self, obs: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Sampled action indices [B, T] (no gradient; score them with `log_prob`)."""
        with torch.no_grad():
            if self.autoregressive:
                return self._sample_autoregressive(obs, temperature, top_k, generator)
            logits = self._filter(self.logits(obs), temperature, top_k)
            probs = torch.softmax(logits, -1)
            flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            return flat.view(probs.shape[:-1])

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(actions | obs) summed over slots [B], entropy summed over slots [B]), with grad."""
        dist = Categorical(logits=self.logits(obs, actions))
        return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.autoregressive:
                return self._sample_autoregressive(obs, 0.0, None, None)
            return self.logits(obs).argmax(-1)

    def prompts(self, obs: torch.Tensor, vocab: ActionVocab) -> list[str]:
        """The greedy prompt text for each observation: what the user sees and what evaluation scores."""
        return [vocab.decode(row) for row in self.greedy(obs).tolist()]

    def _sample_autoregressive(self, obs, temperature, top_k, generator):
        raise NotImplementedError


class Unconditioned(PromptPolicy):
    """One categorical per slot, shared by all questions."""

    kind = "unconditioned"
    uses_observation = False

    def __init__(self, prompt_length: int, vocab_size: int, **_):
        super().__init__(prompt_length, vocab_size)
        self.slot_logits = nn.Parameter(torch.zeros(prompt_length, vocab_size))

    def logits(self, obs, actions=None):
        return self.slot_logits.unsqueeze(0).expand(obs.shape[0], -1, -1)


class Refiner(PromptPolicy):
    """The seed's Refiner, made trainable: features -> MLP -> per-slot vectors -> tied logits."""

    kind = "refiner"

    def __init__(self, prompt_length: int, vocab_size: int, *, feature_dim: int, embeddings: torch.Tensor,
                 width: int = PolicyConfig.policy_width):
        super().__init__(prompt_length, vocab_size)
        self.feature_dim, self.width = feature_dim, width
        self.register_buffer("embeddings", embeddings, persistent=False)  # frozen; rebuilt from the LLM
        emb_dim = embeddings.shape[1]
        self.norm = nn.LayerNorm(feature_dim)
        self.body = nn.Sequential(nn.Linear(feature_dim, width), nn.ReLU())
        self.slots = nn.Linear(width, prompt_length * emb_dim)
        nn.init.zeros_(self.slots.weight)  # start uniform: logits = bias = 0
        nn.init.zeros_(self.slots.bias)
        self.slot_bias = nn.Parameter(torch.zeros(prompt_length, vocab_size))
        self.scale = nn.Parameter(torch.tensor(float(emb_dim) ** 0.5))

    def config(self):
        return {**super().config(), "feature_dim": self.feature_dim, "width": self.width}

    def logits(self, obs, actions=None):
        vectors = self.slots(self.body(self.norm(obs))).view(obs.shape[0], self.prompt_length, -1)
        return self.scale * vectors @ self.embeddings.T + self.slot_bias


class AutoregressiveRefiner(PromptPolicy):
    """GRU over the prompt so far, initial state from the question features; tied output logits."""

    kind = "autoregressive"
    autoregressive = True

    def __init__(self, prompt_length: int, vocab_size: int, *, feature_dim: int, embeddings: torch.Tensor,
                 width: int = PolicyConfig.policy_width):
        super().__init__(prompt_length, vocab_size)
        self.feature_dim, self.width = feature_dim, width
        self.register_buffer("embeddings", embeddings, persistent=False)
        emb_dim = embeddings.shape[1]
        self.norm = nn.LayerNorm(feature_dim)
        self.init_state = nn.Sequential(nn.Linear(feature_dim, width), nn.Tanh())
        self.start = nn.Parameter(torch.zeros(emb_dim))
        self.cell = nn.GRUCell(emb_dim, width)
        self.out = nn.Linear(width, emb_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.slot_bias = nn.Parameter(torch.zeros(prompt_length, vocab_size))

    def config(self):
        return {**super().config(), "feature_dim": self.feature_dim, "width": self.width}

    def _step_logits(self, state, t):
        return self.out(state) @ self.embeddings.T + self.slot_bias[t]

    def logits(self, obs, actions=None):
        if actions is None:
            raise ValueError("the autoregressive policy needs the actions to score (teacher forcing)")
        state = self.init_state(self.norm(obs))
        inputs = self.start.expand(obs.shape[0], -1)
        out = []
        for t in range(self.prompt_length):
            state = self.cell(inputs, state)
            out.append(self._step_logits(state, t))
            inputs = self.embeddings[actions[:, t]]
        return torch.stack(out, 1)

    def _sample_autoregressive(self, obs, temperature, top_k, generator):
        state = self.init_state(self.norm(obs))
        inputs = self.start.expand(obs.shape[0], -1)
        chosen = []
        for t in range(self.prompt_length):
            state = self.cell(inputs, state)
            logits = self._step_logits(state, t)
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                probs = torch.softmax(self._filter(logits, temperature, top_k), -1)
                token = torch.multinomial(probs, 1, generator=generator).view(-1)
            chosen.append(token)
            inputs = self.embeddings[token]
        return torch.stack(chosen, 1)


class FixedPrompt(PromptPolicy):
    """A given prompt text for every question (hand-written, or the best one random search found)."""

    kind = "fixed"
    uses_observation = False

    def __init__(self, text: str, prompt_length: int = 0, vocab_size: int = 0, actions=None, **_):
        super().__init__(prompt_length, vocab_size)
        self.text = text
        self.actions = list(actions) if actions is not None else None

    def config(self):
        return {**super().config(), "text": self.text, "actions": self.actions}

    def logits(self, obs, actions=None):
        raise TypeError("a fixed prompt is not a distribution: it cannot be sampled or trained")

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        if self.actions is None:
            raise TypeError(f"the fixed prompt {self.text!r} was given as text, not as actions")
        return torch.tensor([self.actions] * obs.shape[0], dtype=torch.long)

    def prompts(self, obs: torch.Tensor, vocab: ActionVocab | None = None) -> list[str]:
        return [self.text] * obs.shape[0]


class SoftPrompt(PromptPolicy):
    """Prompt embeddings [L, D] (float32) for one LLM, the same for every question."""

    kind = "soft"
    uses_observation = False

    def __init__(self, engine, embeddings: torch.Tensor, vocab_size: int = 0):
        super().__init__(embeddings.shape[0], vocab_size)
        self.engine = engine  # not a module: the frozen LLM whose input space these embeddings live in
        self.embeddings = nn.Parameter(embeddings.detach().float().clone())

    def config(self):
        return {**super().config(), "embedding_dim": self.embeddings.shape[1]}

    def logits(self, obs, actions=None):
        raise TypeError("a soft prompt is not a distribution over tokens: it cannot be sampled")

    def prompts(self, obs: torch.Tensor, vocab: ActionVocab | None = None) -> list[str]:
        return [self.engine.soft_prompt_text(self.embeddings)] * obs.shape[0]

    def reading(self) -> str:
        """The nearest token (cosine) of each row, as text: what the soft prompt is closest to saying."""
        return self.engine.tokenizer.decode(nearest_tokens(self.embeddings, self.engine.token_embeddings()))


def nearest_tokens(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
    """For each row [L, D], the index of the row of `table` [V, D] with the highest cosine similarity."""
    rows = torch.nn.functional.normalize(rows.detach().float().cpu(), dim=-1)
    table = torch.nn.functional.normalize(table.detach().float().cpu(), dim=-1)
    return (rows @ table.T).argmax(-1).tolist()


def build_policy(kind: str, *, engine, vocab: ActionVocab, prompt_length: int,
                 width: int = PolicyConfig.policy_width, text: str | None = None, actions=None) -> PromptPolicy:
    """A fresh policy of `kind` for this engine's LLM and action vocabulary (`soft`: zero embeddings, to load
    into); `width` is the refiners' hidden layer."""
    if kind == "soft":
        return SoftPrompt(engine, torch.zeros(prompt_length, engine.hidden_size), len(vocab))
    if kind == "unconditioned":
        return Unconditioned(prompt_length, len(vocab))
    if kind == "fixed":
        return FixedPrompt(text or "", prompt_length, len(vocab), actions=actions)
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy {kind!r}; choose from {', '.join(POLICY_KINDS)}")
    cls = Refiner if kind == "refiner" else AutoregressiveRefiner
    return cls(prompt_length, len(vocab), feature_dim=engine.hidden_size, embeddings=_tied_embeddings(engine, vocab),
               width=width)


def prompts_for(policy: PromptPolicy, vocab: ActionVocab, obs: torch.Tensor) -> list[str]:
    """The greedy prompt text for each observation (any prompt source: see `PromptPolicy.prompts`)."""
    return policy.prompts(obs, vocab)
