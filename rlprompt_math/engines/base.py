"""The engine interface: what the reward path asks of a frozen LLM, whoever computes it.

An `Engine` is the only thing the oracle (`oracle.score_pairs`), the environment, the agents, the
rewards and the evaluation call. Two engines implement it:

  * `engines.transformers.TransformersEngine` -- the model in this process (CPU or CUDA);
  * `engines.openai.OpenAIEngine`             -- any OpenAI-compatible completions server (vLLM,
                                                 SGLang, TGI, llama.cpp's `llama-server`), one URL
                                                 or several replicas.

What every engine shares lives here, so it is the same whichever engine answers:

  * `render`: the text the model sees for (prompt, question), from the local tokenizer's chat
    template. A served engine sends exactly this text, so the same model sees the same tokens;
  * `generate`: the greedy cache (repeated pairs cost nothing) and the call accounting (`stats`);
    an engine only implements `_complete`, the decoding of texts that are not cached;
  * `fingerprint`: what a saved policy checks before it is used with an engine.

Capabilities that need the weights in this process (teacher forcing with gradients: `prompt_loss`,
soft prompts) belong to the `transformers` engine; the others raise `EngineCapabilityError`.
This module imports no engine; `engines.load_engine` turns the `[engine]` settings into one.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..config import ENGINE_CACHE_SIZE, OracleConfig
from ..templates import PromptLike, render



class EngineError(RuntimeError):
    """An engine could not answer (a server gave up, or answered something malformed); the message
    names the engine and the request."""


class EngineCapabilityError(EngineError):
    """The engine cannot compute what was asked (a likelihood from a server without prompt log-probs,
    a gradient from a served model); the message says which engine can."""


@dataclass
class EngineStats:
    """Counters the environment reports in `info` and the CLI shows in its progress bar."""

    generate_calls: int = 0       # calls to Engine.generate
    generated_rows: int = 0       # rows actually decoded by the model (cache misses)
    cache_hits: int = 0           # rows answered from the greedy cache
    forward_rows: int = 0         # rows scored by teacher forcing or feature extraction
    new_tokens: int = 0           # tokens generated
    requests: int = 0             # HTTP requests sent (served engines; retries included)
    retries: int = 0              # requests sent again after a connection error or a 5xx
    prompt_tokens: int = 0        # prompt tokens the server reports having read (served engines)
    prefill_tokens: int = 0       # prompt tokens run through the model (in-process engine; padding excluded)
    reused_prefix_tokens: int = 0  # prompt tokens a row took from a shared prefix instead of computing them
    engine_seconds: float = 0.0   # wall time spent in the engine's decoding and scoring


@dataclass(frozen=True)
class Trace:
    """What one greedy decode saw: its tokens and, at each step, the log-probabilities of `watch` ids.

    Recorded only when `generate(..., watch=ids)` asks: a dense reward can then read how likely
    the gold answer's tokens were where the model wrote its own, from logits the decode computed
    anyway, with no second forward pass. `logprobs` has one row per generated token, plus one for
    the step that chose EOS.
    """

    token_ids: tuple[int, ...]
    watch: tuple[int, ...]
    logprobs: torch.Tensor  # [steps, len(watch)] float32

    def covers(self, ids: Sequence[int]) -> bool:
        return set(ids) <= set(self.watch)

    def token_index(self, tokenizer, completion: str, char_position: int) -> int | None:
        """The generated token at which this decode reaches `completion[:char_position]`, or None when
        that is no token boundary or the decode did not write that text (another decode of the prompt).

        A bisection over the decoded length of the first k tokens (it grows with k): a few decodes
        instead of one per token, each of a growing prefix."""
        def decoded(k: int) -> str:
            return tokenizer.decode(self.token_ids[:k], skip_special_tokens=True)

        low, high = 0, len(self.token_ids)
        if len(decoded(high)) < char_position:
            return None
        while low < high:  # the first k whose text reaches char_position
            middle = (low + high) // 2
            if len(decoded(middle)) >= char_position:
                high = middle
            else:
                low = middle + 1
        return low if decoded(low) == completion[:char_position] else None

    def logprob(self, start: int, ids: Sequence[int]) -> float | None:
        """log p(ids) from step `start` on, given the model's own tokens before each (None: not recorded)."""
        column = {t: i for i, t in enumerate(self.watch)}
        if start + len(ids) > len(self.logprobs) or any(t not in column for t in ids):
            return None
        return float(sum(self.logprobs[start + j, column[t]] for j, t in enumerate(ids)))


class Engine:
    """A frozen LLM as the oracle (`oracle.score_pairs`) asks it: rendering, cached generation, scoring,
    features."""

    kind = "engine"  # the `--engine` name

    def __init__(self, tokenizer, *, name: str, template: str | None = None,
                 cache_size: int = ENGINE_CACHE_SIZE):
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.name = name
        self.template = template
        self.stats = EngineStats()
        self._cache: OrderedDict[tuple, str] = OrderedDict()
        self._traces: OrderedDict[str, Trace] = OrderedDict()  # by rendered text: greedy decodes only
        self._cache_size = cache_size

    def __deepcopy__(self, memo):
        # The engine is frozen and shared: gymnasium deep-copies env kwargs, and a copy of the
        # model would double memory for nothing.
        return self

    # ---- identity ------------------------------------------------------------------------------

    @functools.cached_property
    def tokenizer_hash(self) -> str:
        """A short digest of the vocabulary, so a saved policy can refuse a different tokenizer."""
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])
        digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode("utf-8"))
        return digest.hexdigest()[:16]

    def fingerprint(self) -> dict:
        return {"model": self.name, "vocab_size": len(self.tokenizer),
                "hidden_size": self.hidden_size, "tokenizer_hash": self.tokenizer_hash}

    # ---- text the LLM sees -------------------------------------------------------------------

    def render(self, prompt: PromptLike, question: str) -> str:
        """The text the LLM sees for (prompt, question): `templates.render` with this engine's template."""
        return render(self.tokenizer, self.template, prompt, question, name=self.name)

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, texts: Sequence[str], *, max_new_tokens: int = OracleConfig.max_new_tokens, temperature: float = 0.0,
                 top_k: int | None = None, stop: Sequence[str] | None = None,
                 stop_when: Callable[[str], bool] | None = None, batch_size: int = 64,
                 seed: int | None = None, use_cache: bool = True,
                 watch: Sequence[int] | None = None) -> list[str]:
        """Completions for rendered texts, greedy when `temperature == 0`.

        Each row stops at EOS or at the first stop string (the stop string is cut off), or when
        `stop_when(text)` is true, which is asked at each line break of the answer (the text is
        kept, line break included). Greedy completions are cached by (text, settings), so repeated
        pairs cost no model call. Sampling (`temperature > 0`) is seeded by `seed`. With `watch`
        (token ids), greedy decodes also record a `Trace` where the engine can (`trace(text)`); a
        cached completion without one that covers `watch` is decoded again.
        """
        texts = list(texts)
        watch = tuple(sorted(set(int(t) for t in watch))) if watch and self.records_traces else None
        self.stats.generate_calls += 1
        greedy = temperature == 0
        # The predicate itself is in the key (functions hash by identity; the key keeps it alive).
        settings = (max_new_tokens, tuple(stop or ()), stop_when)
        results: list[str | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            key = (text, settings)
            traced = watch is None or (text in self._traces and self._traces[text].covers(watch))
            if greedy and use_cache and key in self._cache and traced:
                self._cache.move_to_end(key)
                results[i] = self._cache[key]
                self.stats.cache_hits += 1
            else:
                todo.setdefault(text, []).append(i)
        if greedy:
            # Identical rows within a call are decoded once.
            self.stats.cache_hits += sum(len(v) - 1 for v in todo.values())
            jobs = [(t, todo[t]) for t in todo]
        else:
            jobs = [(texts[i], [i]) for t in todo for i in todo[t]]
        if jobs:
            start = time.perf_counter()
            outs, traces = self._complete([t for t, _ in jobs], max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_k=top_k, stop=list(stop or ()),
                                          stop_when=stop_when, seed=seed, batch_size=batch_size,
                                          watch=watch if greedy else None)
            self.stats.engine_seconds += time.perf_counter() - start
            for k, ((text, indices), out) in enumerate(zip(jobs, outs)):
                for i in indices:
                    results[i] = out
                if greedy and use_cache:
                    self._remember((text, settings), out)
                if traces is not None:
                    self._remember_trace(text, traces[k])
        return [r if r is not None else "" for r in results]

    def trace(self, text: str) -> Trace | None:
        """The trace of the latest watched greedy decode of `text` (greedy prefixes do not depend on
        the length limit or stop rules, so one trace serves them all), or None."""
        return self._traces.get(text)

    def _remember_trace(self, text: str, trace: Trace) -> None:
        self._traces[text] = trace
        self._traces.move_to_end(text)
        while len(self._traces) > self._cache_size:
            self._traces.popitem(last=False)

    def _remember(self, key: tuple, value: str) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # ---- what each engine implements ---------------------------------------------------------------

    records_traces = False
    """Whether `_complete` can record `Trace`s (per-step log-probabilities of chosen ids)."""

    def _complete(self, texts: list[str], *, max_new_tokens: int, temperature: float, top_k: int | None,
                  stop: list[str], stop_when: Callable[[str], bool] | None, seed: int | None,
                  batch_size: int, watch: tuple[int, ...] | None) -> tuple[list[str], list[Trace] | None]:
        """Decode `texts` (none cached): (completions in order, traces when `watch` is given, else None)."""
        raise NotImplementedError

    def answer_logprobs(self, texts: Sequence[str], answers: Sequence[str], *, reduction: str = "sum",
                        batch_size: int = 32) -> list[float]:
        """Teacher-forced log-likelihood of `answers[i]` right after `texts[i]` (`reduction` sum or mean)."""
        raise NotImplementedError

    def features(self, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        """Question features for conditioned policies: [B, hidden_size] float32 on the CPU."""
        raise NotImplementedError

    def question_features(self, questions: Sequence[str]) -> torch.Tensor:
        """The features a conditioned policy reads for each question: `features` of the question as the LLM
        sees it with no prompt, one question per forward pass, so a question's features never depend on its
        batch-mates (padded batches differ in the last bits) and runs and resumes stay bitwise reproducible.
        [len(questions), hidden_size] float32. The environment's observations and a pointer policy's pool
        keys both come from here."""
        rows = [self.features([self.render("", question)])[0] for question in questions]
        return torch.stack(rows) if rows else torch.zeros(0, self.hidden_size)

    def token_embeddings(self) -> torch.Tensor:
        """The input token-embedding matrix [V, D] (policies score their slots against it)."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def prompt_loss(self, prompt_embeds: torch.Tensor, questions: Sequence[str], answers: Sequence[str], *,
                    reduction: str = "mean") -> torch.Tensor:
        raise EngineCapabilityError(self._needs_weights("a gradient through the frozen LLM (prompt_loss)"))

    def soft_prompt_text(self, embeddings: torch.Tensor) -> str:
        raise EngineCapabilityError(self._needs_weights("soft prompts (prompt embeddings)"))

    def _needs_weights(self, what: str) -> str:
        return (f"{what} needs the model's weights in this process; the {self.kind} engine ({self.name}) "
                "cannot provide it. Use --engine transformers (the default) for the soft-prompt, pez and "
                "gumbel agents.")

