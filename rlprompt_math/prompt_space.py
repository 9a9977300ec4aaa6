"""What a policy's action means: a few categorical factors that decode to one prompt.

An action is one row of slot indices, in this order:

    shots exemplar slots     each 0 for "none" (a shorter prompt), or 1 + a pool problem's index
    one answer-form slot     which of `forms` the exemplars' answers are written in (only when shots > 0)
    prompt_length slots      instruction tokens, indices into the action vocabulary (as before)

so the Gymnasium environment exposes it as one `MultiDiscrete(space.nvec)`, and a policy has one
categorical head per slot. Index 0 of an exemplar slot, as of an instruction slot (the vocabulary's
"no token"), adds nothing: the all-zeros action is the empty prompt, which is what an untrained policy
(zero logits, ties broken toward index 0) writes greedily, so a learning curve starts from "no prompt".
With `shots == 0` the space is the instruction slots alone and `decode` is exactly `vocab.decode`: the
same actions, the same text, bit for bit.

    space = PromptSpace(vocab, 8, pool, shots=2)
    space.slot_sizes      # [33, 33, 4, 107, ..., 107]
    space.decode(row)     # Prompt("...", (Exemplar(q, a), ...)), or a plain str without exemplars

Exemplars come only from the pool, and `ExemplarPool.from_splits` draws the pool from the training
split only, so no decodable prompt shows a validation or test problem.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import ANSWER_FORMS, PolicyConfig
from .exemplars import ExemplarPool
from .oracle import Decoding
from .templates import Prompt, PromptLike
from .vocab import ActionVocab

__all__ = ["PromptSpace", "draw_pool"]


class PromptSpace:
    """The slots of an action (see the module docstring) and how a row of them becomes a prompt."""

    def __init__(self, vocab: ActionVocab, prompt_length: int, pool: ExemplarPool | None = None, shots: int = 0,
                 forms: Sequence[str] = ANSWER_FORMS):
        self.vocab, self.prompt_length, self.pool = vocab, int(prompt_length), pool
        self.shots, self.forms = int(shots), tuple(forms)
        if self.prompt_length < 0 or self.shots < 0:
            raise ValueError(f"prompt_length and shots must be >= 0, not {self.prompt_length} and {self.shots}")
        if self.shots:
            if pool is None or not len(pool):
                raise ValueError("exemplar slots (shots > 0) need an exemplar pool to choose from")
            unknown = [f for f in self.forms if f not in ANSWER_FORMS]
            if not self.forms or unknown or len(set(self.forms)) != len(self.forms):
                raise ValueError(f"answer forms {self.forms} must be distinct ones of {ANSWER_FORMS}")
            if "completion" in self.forms and not pool.has_completions:
                raise ValueError("the completion answer form needs the pool's completions "
                                 "(ExemplarPool.collect_completions) before the space is built")

    # ---- the slots -----------------------------------------------------------------------------

    none_index = 0  # an exemplar slot's "no exemplar"; slot value i > 0 shows pool problem i - 1

    @property
    def factor_sizes(self) -> list[int]:
        """The sizes of the slots before the instruction tokens: exemplar slots, then the answer form."""
        if not self.shots:
            return []
        return [len(self.pool) + 1] * self.shots + [len(self.forms)]

    @property
    def slot_sizes(self) -> list[int]:
        return self.factor_sizes + [len(self.vocab)] * self.prompt_length

    @property
    def slot_kinds(self) -> list[str]:
        """What each slot chooses: "exemplar", "form" or "token"."""
        factors = ["exemplar"] * self.shots + ["form"] if self.shots else []
        return factors + ["token"] * self.prompt_length

    @property
    def nvec(self) -> np.ndarray:
        """The slot sizes as gymnasium's `MultiDiscrete` wants them."""
        return np.asarray(self.slot_sizes, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.factor_sizes) + self.prompt_length

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` uniformly random actions [n, len(self)] (each slot uniform over its own size)."""
        return rng.integers(0, self.nvec, size=(n, len(self)))

    # ---- decoding ------------------------------------------------------------------------------

    def exemplar_indices(self, row: Sequence[int]) -> list[int]:
        """The pool indices a row shows, in slot order: "none" skipped, a repeated problem shown once."""
        picks = [int(a) for a in list(row)[: self.shots]]
        return list(dict.fromkeys(i - 1 for i in picks if i != self.none_index))

    def form(self, row: Sequence[int]) -> str | None:
        return self.forms[int(row[self.shots])] if self.shots else None

    def decode(self, row: Sequence[int]) -> PromptLike:
        """The prompt an action means: `vocab.decode` of the instruction slots, as a str when it shows no
        exemplar (always so when shots == 0), else a `Prompt` with the exemplars in the chosen form."""
        row = [int(a) for a in row]
        if len(row) != len(self):
            raise ValueError(f"an action of {len(row)} slots for a space of {len(self)}")
        instruction = self.vocab.decode(row[len(self.factor_sizes):])
        if not self.shots:
            return instruction
        form = self.form(row)
        exemplars = tuple(self.pool.exemplar(i, form) for i in self.exemplar_indices(row))
        return Prompt(instruction, exemplars) if exemplars else instruction

    def describe(self) -> str:
        words = f"{self.prompt_length} instruction slots over {len(self.vocab)} actions"
        if not self.shots:
            return words
        return (f"{self.shots} exemplar slots over a pool of {len(self.pool)} training problems (or none), "
                f"answers {' | '.join(self.forms)}, {words}")

    # ---- saving: policy files hold the space, so a saved policy decodes without its run directory ----

    def to_dict(self) -> dict:
        """The space beside the vocabulary (saved separately): shots, forms and the pool itself."""
        return {"prompt_length": self.prompt_length, "shots": self.shots, "forms": list(self.forms),
                "pool": self.pool.to_dict() if self.shots else None}

    @classmethod
    def from_dict(cls, vocab: ActionVocab, data: dict) -> "PromptSpace":
        pool = ExemplarPool.from_dict(data["pool"]) if data.get("shots") else None
        return cls(vocab, data["prompt_length"], pool, data.get("shots", 0), data.get("forms", ANSWER_FORMS))


def draw_pool(splits: dict[str, list], *, size: int = PolicyConfig.exemplar_pool, seed: int = 0,
              forms: Sequence[str] = PolicyConfig.answer_forms, engine=None, decoding: Decoding | None = None
              ) -> tuple[ExemplarPool, int]:
    """(an exemplar pool of `size` problems drawn (`seed`) from `splits["train"]` only, refused if one is
    also in validation or test; the oracle pairs spent on it). The completion form, if among `forms`,
    asks `engine` once per pool problem (greedy, with `decoding`'s length and stops)."""
    held_out = splits["validation"] + splits["test"]
    pool = ExemplarPool.from_splits(splits["train"], held_out, min(size, len(splits["train"])), seed)
    pairs = pool.collect_completions(engine, decoding or Decoding())["oracle_pairs"] if "completion" in forms else 0
    return pool, pairs
