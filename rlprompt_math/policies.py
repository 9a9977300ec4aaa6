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
  knn             one answer form and instruction for all, each question shown its nearest pool problems
                  (`NearestExemplars`: the `knn` agent's result, nearest-neighbour retrieval).
  cluster         a prompt per cluster of questions, each question its nearest centroid's (`ClusterPrompts`:
                  the `cluster` agent's result, cluster-then-search).
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
from .prompt_space import PromptSpace
from .templates import Prompt, PromptLike
from .vocab import EMPTY, ActionVocab

__all__ = ["POLICY_KINDS", "AutoregressiveRefiner", "ClusterPrompts", "FixedPrompt", "NearestExemplars", "PromptPolicy",
           "Refiner", "SoftPrompt", "Unconditioned", "build_policy", "centred_cosine", "nearest_centroid",
           "nearest_tokens", "policy_prompts", "pool_features"]


POINTER_THRESHOLD = 0.5  # the cosine similarity at which the pointer's exemplar and "none" start level (Refiner)


def centred_cosine(queries: torch.Tensor, keys: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity [Q, K] of feature rows after subtracting `center` (default: the keys' mean): mean-pooled
    hidden states share a large common component (the chat template), which would make every pair look alike.
    The Refiner's pointer and nearest-neighbour retrieval both score with it."""
    center = keys.float().mean(0) if center is None else center
    return (nn.functional.normalize(queries.float() - center, dim=-1)
            @ nn.functional.normalize(keys.float() - center, dim=-1).T)


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

    def slot_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The entropy of each slot's choice [B, S] (given `actions` for the slots that depend on earlier ones)."""
        with torch.no_grad():
            return Categorical(logits=self.logits(obs, actions)).entropy()

    def parameter_groups(self, lr: float, network_lr: float) -> list[dict]:
        """The optimizer's parameter groups: a question-conditioned policy's network weights at `network_lr`,
        everything else (a table of logits, a bias per choice) at `lr` (see `Refiner.table_parameters`)."""
        tables = self.table_parameters() if self.uses_observation else list(self.parameters())
        table_ids = {id(p) for p in tables}
        table = [p for p in self.parameters() if id(p) in table_ids]
        network = [p for p in self.parameters() if id(p) not in table_ids]
        return [group for group in ({"params": table, "lr": lr}, {"params": network, "lr": network_lr})
                if group["params"]]

    def table_parameters(self) -> list[nn.Parameter]:
        """The parameters that act as a table of logits (one number per choice): stepped at the table's `--lr`."""
        return []

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
    same hidden layer, so each choice is conditioned on the question.

    With `pool_keys` (the pool problems' features, [N, feature_dim]: a pointer head), an exemplar slot also
    scores each pool problem by its similarity to the question, `scale * cos(question, problem)` on features
    centred on the pool's mean, added to its head's logits. "Show a problem like this one" is then one shared
    direction, not N unrelated logits to learn per slot, and an untrained Refiner's greedy exemplars are the
    question's nearest pool problems (nearest-neighbour retrieval, KATE) where they are similar enough
    (cosine above POINTER_THRESHOLD; else none: a question unlike any in training gets no exemplars). Its
    exemplar slots then choose without replacement (slot 2 cannot repeat slot 1's problem; "none" may repeat),
    so greedy shows the two nearest rather than the nearest twice; sampling and log-probabilities follow the
    same rule."""

    kind = "refiner"

    def __init__(self, prompt_length: int, vocab_size: int, *, feature_dim: int, embeddings: torch.Tensor,
                 width: int = PolicyConfig.policy_width, factor_sizes: Sequence[int] = (), shots: int = 0,
                 pool_keys: torch.Tensor | None = None, pointer_scale: float = PolicyConfig.pointer_scale):
        super().__init__(prompt_length, vocab_size, factor_sizes)
        self.feature_dim, self.width = feature_dim, width
        self.shots = int(shots) if pool_keys is not None else 0  # exemplar slots the pointer scores
        if pool_keys is not None:
            if not shots or any(size != len(pool_keys) + 1 for size in self.factor_sizes[:shots]):
                raise ValueError(f"pointer keys for {len(pool_keys)} pool problems do not fit exemplar slots "
                                 f"{self.factor_sizes[:shots]}")
            keys = pool_keys.float()
            # Frozen, rebuilt from the LLM on load (as the token embeddings are): not saved.
            self.register_buffer("key_center", keys.mean(0), persistent=False)
            self.register_buffer("keys", keys, persistent=False)
            self.pointer_scale = nn.Parameter(torch.full((self.shots,), float(pointer_scale)))

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
        # With the pointer, "none" starts level with a pool problem of similarity POINTER_THRESHOLD: a question unlike
        # every pool problem is shown no exemplars rather than the least unlike ones (of another kind, whose answers
        # pull the model into the wrong form). 0.5 is a choice, not a tuned value.
        with torch.no_grad():
            for head in self.factor_heads[: self.shots]:
                head.bias[0] = float(pointer_scale) * POINTER_THRESHOLD

    def config(self):
        config = {**super().config(), "feature_dim": self.feature_dim, "width": self.width}
        if self.shots:  # absent from policies without a pointer head: their files are as before
            config["pointer_shots"] = self.shots
        return config

    def table_parameters(self):
        """Each choice's own bias (the words' `slot_bias`, the factor heads' biases) and the pointer's scale: the
        one-prompt-for-all part of the Refiner, which moves at the table's --lr as the unconditioned policy's
        logits do; the network weights that condition on the question move at --network-lr."""
        params = [self.slot_bias] + [head.bias for head in self.factor_heads]
        return params + ([self.pointer_scale] if self.shots else [])

    def parameter_groups(self, lr: float, network_lr: float) -> list[dict]:
        """As `PromptPolicy.parameter_groups`, with the tied word head (`slots`, `scale`) slower by its gain.

        Adam moves every weight by about its learning rate per step. A factor head's weight moves its logit by
        about that times the hidden layer's activity; a word-vector weight moves a word's logit by that times
        `scale` and the embedding row's L1 norm as well (about 450 on the default model), so one step at
        --network-lr 0.01 took the word slots from 4.7 nats of entropy to 0 (a development run on mixed problems). Its
        rate is divided by that gain, so every head's logits move by about the same nats per step."""
        gain = float(self.scale.detach()) * float(self.embeddings.abs().sum(-1).mean().clamp(min=1e-6))
        word_ids = {id(self.slots.weight), id(self.slots.bias), id(self.scale)}
        groups = super().parameter_groups(lr, network_lr)
        out = []
        for group in groups:
            rest = [p for p in group["params"] if id(p) not in word_ids]
            if rest:
                out.append({**group, "params": rest})
        words = [p for p in self.parameters() if id(p) in word_ids]
        return out + [{"params": words, "lr": network_lr / max(gain, 1.0)}]

    def similarity(self, obs: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [B, N] of each question to each pool problem (features centred on the pool's mean)."""
        return centred_cosine(obs, self.keys, self.key_center)

    def logits(self, obs, actions=None):
        hidden = self.body(self.norm(obs))
        vectors = self.slots(hidden).view(obs.shape[0], self.prompt_length, self.embeddings.shape[1])
        words = self.scale * vectors @ self.embeddings.T + self.slot_bias
        if not self.factor_heads:
            return words
        widest = max(self.slot_sizes)
        factors = [head(hidden) for head in self.factor_heads]
        if self.shots:
            pointed = nn.functional.pad(self.similarity(obs), (1, 0))  # index 0, "none", has no similarity
            for s in range(self.shots):
                factors[s] = factors[s] + self.pointer_scale[s] * pointed
        factors = [nn.functional.pad(f, (0, widest - f.shape[-1])) for f in factors]
        words = nn.functional.pad(words, (0, widest - self.vocab_size))
        logits = self._mask(torch.cat([torch.stack(factors, 1), words], 1))
        return self._without_replacement(logits, actions) if actions is not None else logits

    def _without_replacement(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Exemplar slot s's logits with the problems that slots before it chose masked out ("none" never is)."""
        if self.shots < 2:
            return logits
        taken = torch.zeros_like(logits[:, 0], dtype=torch.bool)
        masked = []
        for s in range(self.shots):
            masked.append(logits[:, s].masked_fill(taken, float("-inf")))
            taken = taken | nn.functional.one_hot(actions[:, s], logits.shape[-1]).bool()
            taken[:, 0] = False
        return torch.cat([torch.stack(masked, 1), logits[:, self.shots:]], 1)

    def _choose(self, obs, pick) -> torch.Tensor:
        """Actions [B, S], exemplar slots one after another (without replacement), `pick(logits [B, V])`."""
        logits = self.logits(obs)
        chosen = torch.zeros(logits.shape[:2], dtype=torch.long)
        for s in range(self.shots):
            chosen[:, s] = pick(self._without_replacement(logits, chosen)[:, s])
        rest = logits[:, self.shots:]
        chosen[:, self.shots:] = pick(rest.reshape(-1, logits.shape[-1])).view(rest.shape[:2])
        return chosen

    def sample(self, obs, *, temperature=1.0, top_k=None, generator=None):
        if self.shots < 2:
            return super().sample(obs, temperature=temperature, top_k=top_k, generator=generator)

        def pick(logits):
            probs = torch.softmax(self._filter(logits, temperature, top_k), -1)
            return torch.multinomial(probs, 1, generator=generator).view(-1)

        with torch.no_grad():
            return self._choose(obs, pick)

    def greedy(self, obs):
        if self.shots < 2:
            return super().greedy(obs)
        with torch.no_grad():
            return self._choose(obs, lambda logits: logits.argmax(-1))


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


def _action_row(actions, slots: int) -> torch.Tensor:
    """`actions` (one action row) as a long tensor of `slots` entries, or zeros (the empty prompt) for None."""
    row = torch.zeros(slots, dtype=torch.long) if actions is None else torch.as_tensor(actions, dtype=torch.long)
    if row.shape != (slots,):
        raise ValueError(f"an action row of shape {tuple(row.shape)} for a prompt space of {slots} slots")
    return row.clone()


class NearestExemplars(PromptPolicy):
    """Nearest-neighbour exemplar retrieval (KATE): each question is shown its `shots` nearest pool problems, the
    most similar first, by `centred_cosine` on the engine's question features (the similarity the Refiner's pointer
    head starts from; the pool's features, `pool_keys`, are rebuilt from the LLM on load, not saved), with one
    answer form and instruction for every question (`actions`: an action row; its exemplar slots are not read).
    Unlike the Refiner's pointer there is no threshold: every question is shown its nearest problems."""

    kind = "knn"
    none_index = PromptSpace.none_index  # an exemplar slot's "no exemplar"

    def __init__(self, prompt_length: int, vocab_size: int, factor_sizes: Sequence[int] = (), *, shots: int = 0,
                 pool_keys: torch.Tensor | None = None, actions=None, **_):
        super().__init__(prompt_length, vocab_size, factor_sizes)
        self.shots = int(shots)
        if self.shots and (pool_keys is None or any(size != len(pool_keys) + 1 for size in self.factor_sizes[:shots])):
            raise ValueError(f"pool features for {None if pool_keys is None else len(pool_keys)} problems do not fit "
                             f"exemplar slots {self.factor_sizes[:shots]}")
        keys = pool_keys.float() if self.shots else torch.zeros(0, 0)
        self.register_buffer("keys", keys, persistent=False)
        self.register_buffer("actions", _action_row(actions, len(self.slot_sizes)))  # the searched form and words

    def config(self):
        return {**super().config(), "shots": self.shots}

    def logits(self, obs, actions=None):
        raise TypeError("nearest-neighbour retrieval is not a distribution: it cannot be sampled or trained")

    def with_exemplars(self, obs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`rows` [B, S] (action rows) with their exemplar slots set to each question's nearest pool problems."""
        rows = torch.as_tensor(rows, dtype=torch.long).clone()
        if self.shots:
            nearest = centred_cosine(obs, self.keys).topk(min(self.shots, len(self.keys)), dim=-1).indices
            rows[:, : self.shots] = self.none_index  # more slots than pool problems: the rest show none
            rows[:, : nearest.shape[1]] = nearest + 1  # slot value i > 0 shows pool problem i - 1
        return rows

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.with_exemplars(obs, self.actions.expand(obs.shape[0], -1))


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Each feature row's nearest centroid [B] by `centred_cosine` around `center` (the training questions' mean
    feature): k-means in the cluster agent and a cluster policy at inference assign questions with this one rule."""
    return centred_cosine(features, centroids, center).argmax(-1)


class ClusterPrompts(PromptPolicy):
    """A prompt per cluster of questions (cluster-then-search): a question gets the action row (`actions` [k, S]) of
    its nearest centroid (`nearest_centroid`). The `cluster` agent's result: centroids from k-means on the training
    questions' features, each cluster's prompt from random search on its questions. Centroids, their center and the
    rows are saved with the policy (they are what was learned)."""

    kind = "cluster"

    def __init__(self, prompt_length: int, vocab_size: int, factor_sizes: Sequence[int] = (), *, feature_dim: int,
                 clusters: int, center: torch.Tensor | None = None, centroids: torch.Tensor | None = None,
                 actions=None, **_):
        super().__init__(prompt_length, vocab_size, factor_sizes)
        self.feature_dim, self.clusters = int(feature_dim), int(clusters)
        if self.clusters < 1:
            raise ValueError(f"a cluster policy needs at least one cluster, not {self.clusters}")
        rows = [None] * self.clusters if actions is None else list(actions)
        if len(rows) != self.clusters:
            raise ValueError(f"{len(rows)} action rows for {self.clusters} clusters")
        center = torch.zeros(self.feature_dim) if center is None else center.float()
        centroids = torch.zeros(self.clusters, self.feature_dim) if centroids is None else centroids.float()
        if center.shape != (self.feature_dim,) or centroids.shape != (self.clusters, self.feature_dim):
            raise ValueError(f"a center {tuple(center.shape)} and centroids {tuple(centroids.shape)} for {self.clusters} "
                             f"clusters of {self.feature_dim} features")
        self.register_buffer("center", center.clone())
        self.register_buffer("centroids", centroids.clone())
        self.register_buffer("actions", torch.stack([_action_row(row, len(self.slot_sizes)) for row in rows]))

    def config(self):
        return {**super().config(), "feature_dim": self.feature_dim, "clusters": self.clusters}

    def logits(self, obs, actions=None):
        raise TypeError("a prompt per cluster is not a distribution: it cannot be sampled or trained")

    def assign(self, obs: torch.Tensor) -> torch.Tensor:
        """Each question's cluster [B]."""
        return nearest_centroid(obs, self.centroids, self.center)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.actions[self.assign(obs)]


def nearest_tokens(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
    """For each row [L, D], the index of the row of `table` [V, D] with the highest cosine similarity."""
    rows = torch.nn.functional.normalize(rows.detach().float().cpu(), dim=-1)
    table = torch.nn.functional.normalize(table.detach().float().cpu(), dim=-1)
    return (rows @ table.T).argmax(-1).tolist()


def pool_features(engine, space) -> torch.Tensor:
    """The question features [N, feature_dim] of the space's exemplar pool problems (`Engine.question_features`):
    what the Refiner's pointer head and nearest-neighbour retrieval compare each question with."""
    return engine.question_features([p.question for p in space.pool.problems])


def build_policy(kind: str, *, engine, vocab: ActionVocab | None = None, prompt_length: int | None = None,
                 space=None, width: int = PolicyConfig.policy_width, text: PromptLike | None = None,
                 actions=None, pointer: bool = False, pointer_scale: float = PolicyConfig.pointer_scale,
                 clusters: int = 1) -> PromptPolicy:
    """A fresh policy of `kind` for this engine's LLM over `space` (a `PromptSpace`: its vocabulary, prompt
    length and other factors), or over `prompt_length` slots of `vocab` (instruction tokens only). `soft`:
    zero embeddings, to load into; `width` is the refiners' hidden layer. `pointer` (the refiner, with exemplar
    slots): score exemplars by the question's similarity to each pool problem (`Refiner`), the pool's
    features asked of `engine` (`pool_features`), as `knn` does. `knn` and `cluster` (`clusters` of them) start
    at the empty prompt, to load into."""
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
    if kind == "knn":
        shots = space.shots if space is not None else 0
        return NearestExemplars(prompt_length, len(vocab), factor_sizes, shots=shots,
                                pool_keys=pool_features(engine, space) if shots else None, actions=actions)
    if kind == "cluster":
        return ClusterPrompts(prompt_length, len(vocab), factor_sizes, feature_dim=engine.hidden_size, clusters=clusters)
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy {kind!r}; choose from {', '.join(POLICY_KINDS)}")
    embeddings = _tied_embeddings(engine, vocab)
    if kind == "refiner":
        keys = None
        if pointer and space is not None and space.shots:
            keys = pool_features(engine, space)
        return Refiner(prompt_length, len(vocab), feature_dim=engine.hidden_size, embeddings=embeddings, width=width,
                       factor_sizes=factor_sizes, shots=space.shots if keys is not None else 0, pool_keys=keys,
                       pointer_scale=pointer_scale)
    return AutoregressiveRefiner(prompt_length, len(vocab), feature_dim=engine.hidden_size, embeddings=embeddings,
                                 width=width, factor_sizes=factor_sizes)


def policy_prompts(policy: PromptPolicy, space, problems: Sequence, feature_engine=None, *,
                   observe=None) -> list[PromptLike]:
    """The greedy prompt of `policy` for each problem: what validation, finalists, evaluation and the user see,
    the one way to ask for it. `space` decodes the policy's actions (its `PromptSpace`; an `ActionVocab` for
    instruction slots only). A question-conditioned policy reads its own model's features: `observe(problems)`
    where given (an env's, which keeps each question's features), else `feature_engine.question_features`,
    one question per forward pass as training reads them, so a near tie between two pool problems breaks
    the same way here as when the policy was kept."""
    if not policy.uses_observation:
        return policy.prompts(torch.zeros(len(problems), 1), space)
    if observe is not None:
        return policy.prompts(torch.as_tensor(observe(problems), dtype=torch.float32), space)
    return policy.prompts(feature_engine.question_features([p.question for p in problems]), space)
