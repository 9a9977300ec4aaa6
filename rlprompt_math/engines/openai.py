"""The `openai` engine: the frozen LLM on any OpenAI-compatible completions server.

`OpenAIEngine` sends the texts `Engine.render` made (the local tokenizer's chat template, so the
served model sees what the local one would) to `POST {base_url}/completions`, several prompts per
request (the `prompt` list) and several requests at once, spread over one or more base URLs
(replicas, or one router in front of them). What it adds to the shared `Engine`:

  * retries with exponential backoff on connection errors, timeouts, 429 and 5xx answers, moving to
    the next replica each time; when it gives up, an `EngineError` that names the server, the
    request and the last error (never a silent zero reward). A 4xx or a malformed response is
    an error at once.
  * `stop_when` (the oracle's stop-at-answer rule) is applied to the returned text: a server cannot
    run a Python predicate, so it decodes up to `max_new_tokens` and the completion is cut where the
    local engine would have stopped.
  * teacher-forced log-probabilities (`answer_logprobs`, the likelihood rewards) by `echo` +
    `logprobs`, which vLLM implements. A server that ignores `echo` (llama.cpp's llama-server does,
    silently) is detected from its response, and the call fails with `EngineCapabilityError`.
  * question features, the token-embedding matrix and the tokenizer come from the local model
    (`local`, the embedded default unless `--model` names another with the served model's tokenizer).
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from ..config import ENGINE_CACHE_SIZE
from .base import Engine, EngineCapabilityError, EngineError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 8.0
_LINE_BREAK_RUN = re.compile(r"\n+")


def cut_at_answer(text: str, stop_when: Callable[[str], bool]) -> str:
    """`text` up to the first run of line breaks after which `stop_when` holds (that run kept), as the
    local engine's decode, which asks `stop_when` at each token holding a line break, would stop."""
    for match in _LINE_BREAK_RUN.finditer(text):
        if stop_when(text[:match.end()]):
            return text[:match.end()]
    return text


def _describe(path: str, body: dict | None, method: str = "POST") -> str:
    prompts = (body or {}).get("prompt")
    if prompts is None:
        return f"{method} {path}"
    first = prompts[0] if isinstance(prompts, list) and prompts else prompts
    shown = repr(first)[:80] + ("..." if len(repr(first)) > 80 else "")
    count = len(prompts) if isinstance(prompts, list) else 1
    return f"{method} {path} with {count} prompt(s), first {shown}"


class OpenAIEngine(Engine):
    """An `Engine` backed by OpenAI-compatible `/completions` servers."""

    kind = "openai"

    def __init__(self, base_urls: Sequence[str], *, local, served_model: str | None = None,
                 timeout: float = 120.0, max_retries: int = 5, concurrency: int = 8,
                 prompts_per_request: int = 16, backoff_s: float = 0.5, cache_size: int = ENGINE_CACHE_SIZE):
        import requests  # noqa: F401  (fail here, not at the first request, if it is missing)

        self.base_urls = [u.rstrip("/") for u in base_urls]
        if not self.base_urls:
            raise EngineError("the openai engine needs at least one base URL (--base-url)")
        self.local = local
        self.timeout, self.max_retries, self.backoff_s = timeout, max_retries, backoff_s
        self.concurrency, self.prompts_per_request = concurrency, prompts_per_request
        self._lock = threading.Lock()
        self._sessions = threading.local()
        self._next_url = 0
        super().__init__(local.tokenizer, name="", template=local.template, cache_size=cache_size)
        self.served_model = served_model or self._only_model()
        self.name = self.served_model

    # ---- what comes from the local model --------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return self.local.hidden_size

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def dtype(self) -> torch.dtype:
        return self.local.dtype

    def token_embeddings(self) -> torch.Tensor:
        return self.local.token_embeddings()

    def features(self, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        return self.local.features(texts, batch_size=batch_size)

    # ---- HTTP --------------------------------------------------------------------------------

    def _session(self):
        import requests

        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
        return session

    def _count(self, **deltas) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request with retries; each retry goes to the next base URL. Returns the decoded JSON."""
        import requests

        with self._lock:
            first = self._next_url
            self._next_url = (self._next_url + 1) % len(self.base_urls)
        last_error, url = "", self.base_urls[first]
        for attempt in range(self.max_retries + 1):
            url = self.base_urls[(first + attempt) % len(self.base_urls)]
            self._count(requests=1)
            try:
                response = self._session().request(method, url + path, json=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                if response.status_code in RETRY_STATUS:
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                elif response.status_code >= 400:
                    raise EngineError(f"{url} refused {_describe(path, body, method)}: HTTP {response.status_code}: "
                                      f"{response.text[:300]}")
                else:
                    try:
                        return response.json()
                    except ValueError:
                        raise EngineError(f"{url} answered {_describe(path, body, method)} with something that is "
                                          f"not JSON: {response.text[:200]!r}") from None
            if attempt < self.max_retries:
                self._count(retries=1)
                time.sleep(min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt))
        raise EngineError(f"{url} did not answer {_describe(path, body, method)} after {self.max_retries + 1} "
                          f"attempts over {len(self.base_urls)} server(s) ({', '.join(self.base_urls)}); last "
                          f"error: {last_error}. A run's last checkpoint is kept: start the server and "
                          "continue with --resume RUN_DIR.")

    def _only_model(self) -> str:
        listing = self._request("GET", "/models")
        names = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
        if len(names) != 1 or not isinstance(names[0], str):
            raise EngineError(f"{self.base_urls[0]}/models lists {names or 'no models'}; name the one to use "
                              "with --served-model")
        return names[0]

    def _completions(self, bodies: list[dict]) -> list[dict]:
        """POST each body to /completions, `concurrency` per base URL at once; responses in order."""
        if len(bodies) == 1:
            return [self._request("POST", "/completions", bodies[0])]
        workers = min(len(bodies), self.concurrency * len(self.base_urls))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda b: self._request("POST", "/completions", b), bodies))

    def _choices(self, response: dict, body: dict) -> list[dict]:
        """The response's choices in prompt order, checked: one per prompt, each with a text."""
        count = len(body["prompt"])
        choices = response.get("choices") if isinstance(response, dict) else None
        if (not isinstance(choices, list) or len(choices) != count
                or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices)):
            raise EngineError(f"{self.base_urls} answered {_describe('/completions', body)} with a malformed "
                              f"response (expected {count} choices with a text): {str(response)[:300]}")
        indices = [c.get("index", k) for k, c in enumerate(choices)]
        if sorted(indices) != list(range(count)):
            raise EngineError(f"the server's choices have indices {indices}, not 0..{count - 1}")
        usage = response.get("usage") or {}
        self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    new_tokens=int(usage.get("completion_tokens") or 0))
        return [c for _, c in sorted(zip(indices, choices), key=lambda pair: pair[0])]

    def _chunks(self, items: list) -> list[list]:
        n = self.prompts_per_request
        return [items[i:i + n] for i in range(0, len(items), n)]

    # ---- the engine interface ------------------------------------------------------------------

    def _complete(self, texts, *, max_new_tokens, temperature, top_k, stop, stop_when, seed, batch_size, watch):
        bodies = []
        for k, chunk in enumerate(self._chunks(texts)):
            body = {"model": self.served_model, "prompt": chunk, "max_tokens": max_new_tokens,
                    "temperature": float(temperature)}
            if stop:
                body["stop"] = list(stop)
            if top_k:
                body["top_k"] = int(top_k)
            if temperature and seed is not None:
                body["seed"] = int(seed) + k
            bodies.append(body)
        completions = []
        for body, response in zip(bodies, self._completions(bodies)):
            completions += [c["text"] for c in self._choices(response, body)]
        self._count(generated_rows=len(texts))
        if stop_when is not None:
            completions = [cut_at_answer(c, stop_when) for c in completions]
        return completions, None

    def answer_logprobs(self, texts: Sequence[str], answers: Sequence[str], *, reduction: str = "sum",
                        batch_size: int = 32) -> list[float]:
        """log p(answer | text) from the server's prompt log-probabilities (`echo`), summed over the tokens
        of the server's own tokenization of text + answer that reach into the answer."""
        if reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        if len(texts) != len(answers):
            raise ValueError(f"{len(texts)} texts but {len(answers)} answers")
        joined = [t + a for t, a in zip(texts, answers)]
        bodies = [{"model": self.served_model, "prompt": chunk, "max_tokens": 1, "temperature": 0.0,
                   "echo": True, "logprobs": 1} for chunk in self._chunks(joined)]
        start = time.perf_counter()
        choices = []
        for body, response in zip(bodies, self._completions(bodies)):
            choices += self._choices(response, body)
        self._count(forward_rows=len(texts), engine_seconds=time.perf_counter() - start)
        return [self._answer_logprob(c, text, answer, reduction)
                for c, text, answer in zip(choices, texts, answers)]

    def _answer_logprob(self, choice: dict, text: str, answer: str, reduction: str) -> float:
        logprobs = choice.get("logprobs") or {}
        offsets, values, tokens = (logprobs.get(k) if isinstance(logprobs, dict) else None
                                   for k in ("text_offset", "token_logprobs", "tokens"))
        echoed = (choice["text"].startswith(text + answer) and isinstance(offsets, list) and isinstance(values, list)
                  and isinstance(tokens, list) and len(offsets) == len(values) == len(tokens) and offsets
                  and offsets[0] == 0)
        if not echoed:
            raise EngineCapabilityError(
                f"the server at {', '.join(self.base_urls)} ignored `echo` (its response holds no log-probabilities "
                "of the prompt), so it cannot score a given answer: the likelihood and answer_likelihood rewards "
                "need a server with prompt log-probabilities, such as vLLM. llama.cpp's llama-server has none. "
                "Use a reward that grades the answer (--reward correct, or partial).")
        end = len(text) + len(answer)
        picked = [float(v) for o, v, tok in zip(offsets, values, tokens)
                  if v is not None and o < end and o + len(tok) > len(text)]
        total = sum(picked)
        return total / max(1, len(picked)) if reduction == "mean" else total
