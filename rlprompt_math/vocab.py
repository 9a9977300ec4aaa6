"""The action vocabulary: which tokens a prompt policy may write.

The full tokenizer (~49k tokens for SmolLM2) makes learning slow; a restricted list is what makes
it tractable. Specs (CLI `--action-vocab SPEC`):
  words            the built-in list of instruction words below (default): each word as one
                   space-prefixed token (words the tokenizer splits are left out), so any
                   sampled prompt reads as words, not fragments
  words:PATH       the same for the words in a text file (whitespace-separated)
  frequent:N       the N most frequent word-like tokens, using BPE merge rank as the frequency
                   proxy (earlier merges are more frequent in the tokenizer's training corpus)
  tokens:PATH      the user's own list: one token string (as the tokenizer spells it) per line
  full             every non-special token

With `empty=True` (the default) action 0 means "no token", so a policy can write prompts shorter
than `prompt_length`, down to no prompt at all.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

INSTRUCTION_WORDS = """
answer answers number numbers only final single give write output reply respond return state
result value total sum compute calculate solve find evaluate show just exactly exact correct
digits digit integer fraction decimal simplified simplest form as a an the one is with without
no words text explanation explain step steps think carefully briefly short concise quick direct
first then now please must should will do not don't be your you it this that of in to for and or
math arithmetic problem question equation expression work check verify careful precise simply
plain format box boxed end last line after before here below above: = . , ! ?
""".split()


class VocabError(ValueError):
    pass


EMPTY = -1  # the "no token" action's id


class ActionVocab:
    """An ordered list of token ids; action index i means token `token_ids[i]` (EMPTY: nothing)."""

    def __init__(self, tokenizer, token_ids: Sequence[int], spec: str = "custom"):
        ids = list(dict.fromkeys(int(t) for t in token_ids))
        if not [i for i in ids if i != EMPTY]:
            raise VocabError(f"action vocabulary {spec!r} is empty")
        self.tokenizer = tokenizer
        self.token_ids = ids
        self.spec = spec

    def __len__(self) -> int:
        return len(self.token_ids)

    def tokens(self, actions: Sequence[int]) -> list[int]:
        return [t for t in (self.token_ids[int(a)] for a in actions) if t != EMPTY]

    def decode(self, actions: Sequence[int]) -> str:
        """Prompt text for a sequence of action indices."""
        return self.tokenizer.decode(self.tokens(actions), skip_special_tokens=True).strip()

    def fingerprint(self) -> str:
        return hashlib.sha256(",".join(map(str, self.token_ids)).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"spec": self.spec, "token_ids": self.token_ids, "fingerprint": self.fingerprint()}

    # ---- constructors ----------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, tokenizer, spec: str = "words", *, empty: bool = True) -> "ActionVocab":
        kind, _, arg = spec.partition(":")
        head = [EMPTY] if empty else []
        if kind == "full":
            return cls(tokenizer, head + _non_special(tokenizer), spec)
        if kind == "frequent":
            return cls(tokenizer, head + _frequent_words(tokenizer, int(arg or 1000)), spec)
        if kind == "words":
            words = Path(arg).read_text().split() if arg else INSTRUCTION_WORDS
            return cls(tokenizer, head + _word_tokens(tokenizer, words), spec)
        if kind == "tokens":
            return cls(tokenizer, head + _listed_tokens(tokenizer, Path(arg).read_text().splitlines()), spec)
        raise VocabError(f"unknown action vocabulary {spec!r}; use words, words:PATH, frequent:N, "
                         "tokens:PATH or full")


def _non_special(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def _frequent_words(tokenizer, n: int) -> list[int]:
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(tokenizer)):  # BPE ids follow merge order: lower id = more frequent merge
        if i in special:
            continue
        text = tokenizer.decode([i])
        if re.fullmatch(r" ?[A-Za-z][a-z]+", text):
            out.append(i)
            if len(out) >= n:
                break
    return out


def _word_tokens(tokenizer, words: Sequence[str]) -> list[int]:
    """One token per word: ' word' (space-prefixed, as inside a sentence) or bare punctuation."""
    ids = []
    special = set(tokenizer.all_special_ids)
    for word in words:
        variant = word if not word[0].isalnum() else " " + word
        pieces = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1 and pieces[0] not in special:
            ids.append(pieces[0])
    return ids


def _listed_tokens(tokenizer, lines: Sequence[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    ids, missing = [], []
    for line in lines:
        token = line.rstrip("\n")
        if not token:
            continue
        if token in vocab:
            ids.append(vocab[token])
        elif token.lstrip("-").isdigit():
            ids.append(int(token))
        else:
            missing.append(token)
    if missing:
        raise VocabError(f"{len(missing)} listed tokens are not in the tokenizer, e.g. {missing[:5]}")
    return ids
