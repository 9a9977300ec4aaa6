"""Prompt policies: distributions over the slots of a prompt space (`prompt_space.PromptSpace`).

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

Every policy is a prompt source: `prompts(obs, space)` gives the greedy prompt per observation (text,
or a `templates.Prompt` with exemplars), which is what validation, finalists and evaluation score; a
fixed prompt returns its prompt.

Slots: `prompt_length` instruction-token slots over the action vocabulary, after any other factors of
the prompt space (`factor_sizes`: exemplar slots and the answer form, each its own size). The logits are
[B, slots, max slot size], the entries past a slot's size masked to -inf, so a policy never samples an
index its slot does not have, and sampling, log-probabilities, entropy and greedy work unchanged.
With no other factors (the default) every policy is exactly what it was before they existed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.distributions import Categorical

from .config import POLICY_KINDS, PolicyConfig
from .templates import Prompt, PromptLike
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
    """Base class. Subclasses define `logits(obs, actions=None) -> [B, S, max slot size]` (masked: `_mask`).

    For factorised policies the logits do not depend on `actions`; the autoregressive policy uses
    `actions` (teacher forcing) to score given prompts, and samples slot by slot.
    """

    kind = "base"
    autoregressive = False
    uses_observation = True  # False: the agent need not ask the engine for question features

    def __init__(self, prompt_length: int, vocab_size: int, factor_sizes: Sequence[int] = ()):
        super().__init__()
        self.prompt_length = prompt_length
        self.vocab_size = vocab_size
        self.factor_sizes = [int(n) for n in factor_sizes]  # the slots before the instruction tokens
        self.slot_sizes = self.factor_sizes + [vocab_size] * prompt_length
        sizes = torch.tensor(self.slot_sizes, dtype=torch.long)
        width = max(self.slot_sizes, default=0)
        # valid[s, i]: slot s has an index i. Rebuilt from the sizes, never saved.
        self.register_buffer("valid", torch.arange(width) < sizes[:, None], persistent=False)
        self.masked = bool(len(set(self.slot_sizes)) > 1)

    def config(self) -> dict:
        config = {"kind": self.kind, "prompt_length": self.prompt_length, "vocab_size": self.vocab_size}
        if self.factor_sizes:  # absent from instruction-only policies: their files are as before
            config["factor_sizes"] = self.factor_sizes
        return config

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        """-inf wherever a slot has no such index (nothing to do when every slot has the same size)."""
        return logits.masked_fill(~self.valid, float("-inf")) if self.masked else logits

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

    def prompts(self, obs: torch.Tensor, space) -> list[PromptLike]:
        """The greedy prompt for each observation: what the user sees and what evaluation scores.
        `space` decodes an action row: the `PromptSpace` (or, for instruction slots only, the `ActionVocab`)."""
        return [space.decode(row) for row in self.greedy(obs).tolist()]

    def _sample_autoregressive(self, obs, temperature, top_k, generator):
        raise NotImplementedError


class Unconditioned(PromptPolicy):
    """One categorical per slot, shared by all questions."""

    kind = "unconditioned"
    uses_observation = False

    def __init__(self, prompt_length: int, vocab_size: int, factor_sizes: Sequence[int] = (), **_):
        super().__init__(prompt_length, vocab_size, factor_sizes)
        self.slot_logits = nn.Parameter(torch.zeros(len(self.slot_sizes), max(self.slot_sizes)))

    def logits(self, obs, actions=None):
        return self._mask(self.slot_logits).unsqueeze(0).expand(obs.shape[0], -1, -1)


class Refiner(PromptPolicy):
    """The seed's Refiner, made trainable: features -> MLP -> per-slot vectors -> tied logits for the
    instruction slots; every other factor (an exemplar slot, the answer form) its own linear head on the
    same hidden layer, so each choice is conditioned on the question."""

    kind = "refiner"

    def __init__(self, prompt_length: int, vocab_size: int, *, feature_dim: int, embeddings: torch.Tensor,
                 width: int = PolicyConfig.policy_width, factor_sizes: Sequence[int] = ()):
        super().__init__(prompt_length, vocab_size, factor_sizes)
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
        self.factor_heads = nn.ModuleList(nn.Linear(width, size) for size in self.factor_sizes)
        for head in self.factor_heads:  # start uniform, as the instruction slots do
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def config(self):
        return {**super().config(), "feature_dim": self.feature_dim, "width": self.width}

    def logits(self, obs, actions=None):
        hidden = self.body(self.norm(obs))
        vectors = self.slots(hidden).view(obs.shape[0], self.prompt_length, -1)
        words = self.scale * vectors @ self.embeddings.T + self.slot_bias
        if not self.factor_heads:
            return words
        widest = max(self.slot_sizes)
        factors = [nn.functional.pad(head(hidden), (0, widest - head.out_features)) for head in self.factor_heads]
        words = nn.functional.pad(words, (0, widest - self.vocab_size))
        return self._mask(torch.cat([torch.stack(factors, 1), words], 1))


class AutoregressiveRefiner(PromptPolicy):
    """GRU over the prompt so far, initial state from the question features; tied output logits."""

    kind = "autoregressive"
    autoregressive = True

    def __init__(self, prompt_length: int, vocab_size: int, *, feature_dim: int, embeddings: torch.Tensor,
                 width: int = PolicyConfig.policy_width, factor_sizes: Sequence[int] = ()):
        if factor_sizes:
            raise ValueError("the autoregressive policy writes instruction tokens only, not exemplar or "
                             "answer-form choices: with shots > 0 use the unconditioned or refiner policy")
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
    """A given prompt for every question (hand-written, or the best one random search found): text, or a
    structured `Prompt` with exemplars (`text` is then its label, and the policy file holds it whole)."""

    kind = "fixed"
    uses_observation = False

    def __init__(self, prompt: PromptLike, prompt_length: int = 0, vocab_size: int = 0, actions=None, **_):
        super().__init__(prompt_length, vocab_size)
        # A Prompt without exemplars is its instruction text: plain prompts stay str everywhere.
        self.prompt: PromptLike = prompt if isinstance(prompt, Prompt) and prompt.exemplars else str(prompt)
        self.text = str(self.prompt)
        self.actions = list(actions) if actions is not None else None

    def config(self):
        config = {**super().config(), "text": self.text, "actions": self.actions}
        if isinstance(self.prompt, Prompt):
            config["prompt"] = self.prompt.to_dict()
        return config

    def logits(self, obs, actions=None):
        raise TypeError("a fixed prompt is not a distribution: it cannot be sampled or trained")

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        if self.actions is None:
            raise TypeError(f"the fixed prompt {self.text!r} was given as text, not as actions")
        return torch.tensor([self.actions] * obs.shape[0], dtype=torch.long)

    def prompts(self, obs: torch.Tensor, space=None) -> list[PromptLike]:
        return [self.prompt] * obs.shape[0]


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

    def prompts(self, obs: torch.Tensor, space=None) -> list[str]:
        return [self.engine.soft_prompt_text(self.embeddings)] * obs.shape[0]

    def reading(self) -> str:
        """The nearest token (cosine) of each row, as text: what the soft prompt is closest to saying."""
        return self.engine.tokenizer.decode(nearest_tokens(self.embeddings, self.engine.token_embeddings()))


def nearest_tokens(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
    """For each row [L, D], the index of the row of `table` [V, D] with the highest cosine similarity."""
    rows = torch.nn.functional.normalize(rows.detach().float().cpu(), dim=-1)
    table = torch.nn.functional.normalize(table.detach().float().cpu(), dim=-1)
    return (rows @ table.T).argmax(-1).tolist()


def build_policy(kind: str, *, engine, vocab: ActionVocab | None = None, prompt_length: int | None = None,
                 space=None, width: int = PolicyConfig.policy_width, text: PromptLike | None = None,
                 actions=None) -> PromptPolicy:
    """A fresh policy of `kind` for this engine's LLM over `space` (a `PromptSpace`: its vocabulary, prompt
    length and other factors), or over `prompt_length` slots of `vocab` (instruction tokens only). `soft`:
    zero embeddings, to load into; `width` is the refiners' hidden layer."""
    factor_sizes = []
    if space is not None:
        vocab, prompt_length, factor_sizes = space.vocab, space.prompt_length, space.factor_sizes
    if vocab is None or prompt_length is None:
        raise TypeError("build_policy needs a space, or a vocab and a prompt_length")
    if kind == "soft":
        return SoftPrompt(engine, torch.zeros(prompt_length, engine.hidden_size), len(vocab))
    if kind == "unconditioned":
        return Unconditioned(prompt_length, len(vocab), factor_sizes)
    if kind == "fixed":
        return FixedPrompt(text or "", prompt_length, len(vocab), actions=actions)
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy {kind!r}; choose from {', '.join(POLICY_KINDS)}")
    cls = Refiner if kind == "refiner" else AutoregressiveRefiner
    return cls(prompt_length, len(vocab), feature_dim=engine.hidden_size, embeddings=_tied_embeddings(engine, vocab),
               width=width, factor_sizes=factor_sizes)


def prompts_for(policy: PromptPolicy, space, obs: torch.Tensor) -> list[PromptLike]:
    """The greedy prompt for each observation (any prompt source: see `PromptPolicy.prompts`)."""
    return policy.prompts(obs, space)
