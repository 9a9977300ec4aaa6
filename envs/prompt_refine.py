"""Gymnasium environments: the frozen LLM as a reward oracle for discrete prompts.

`PromptRefineEnv` (a contextual bandit): `reset` draws a problem and observes its question
(hidden-state features from the oracle, or token ids); the action is `prompt_length` indices into
the action vocabulary; `step` decodes them to prompt text, renders it with the question, asks the
oracle, grades the completion with the configured reward functions, and ends the episode.

`PromptRefineSeqEnv`: the same task one token per step, the reward arriving at the last token.

Our agents use the batched fast path `PromptRefineEnv.score(problems, actions)`; `step` is that
same call on one pair, so both give the same reward.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlprompt_math.data import Problem, generate_problems, load_problems, split_problems
from rlprompt_math.llm import FrozenLLM
from rlprompt_math.oracle import Decoding, score_pairs
from rlprompt_math.rewards import RewardMix
from rlprompt_math.vocab import ActionVocab


def _resolve_llm(llm) -> FrozenLLM:
    if isinstance(llm, FrozenLLM):
        return llm
    return FrozenLLM.load(llm)


def _resolve_problems(dataset, split: str, split_seed: int) -> list[Problem]:
    if dataset is None:
        problems = generate_problems(2000, seed=split_seed)
    elif isinstance(dataset, str):
        problems, _ = load_problems(dataset)
    else:
        problems = list(dataset)
    if split in (None, "all"):
        return problems
    chosen = split_problems(problems, split_seed)[split]
    if not chosen:
        raise ValueError(f"the {split!r} split is empty ({len(problems)} problems in all)")
    return chosen


class PromptRefineEnv(gym.Env):
    """One episode = one problem and one prompt. See the module docstring."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, llm: FrozenLLM | str | None = None, dataset: str | Sequence[Problem] | None = None, *,
                 prompt_length: int = 4, action_vocab: ActionVocab | str = "words",
                 rewards: Sequence = ("correct", "partial:0.5"), observation: str = "features",
                 max_new_tokens: int = 32, temperature: float = 0.0, stop: Sequence[str] | None = None,
                 stop_at_answer: bool = True,
                 max_question_tokens: int = 128, split: str | None = "train", split_seed: int = 0,
                 empty_action: bool = True, counters_in_info: bool = True, render_mode: str | None = None):
        self.llm = _resolve_llm(llm)
        self.problems = _resolve_problems(dataset, split, split_seed)
        self.vocab = (action_vocab if isinstance(action_vocab, ActionVocab)
                      else ActionVocab.from_spec(self.llm.tokenizer, action_vocab, empty=empty_action))
        self.reward_mix = rewards if isinstance(rewards, RewardMix) else RewardMix(rewards, llm=self.llm)
        self.prompt_length = int(prompt_length)
        self.decoding = Decoding(int(max_new_tokens), float(temperature), None, tuple(stop or ()),
                                 stop_at_answer=bool(stop_at_answer))
        self.observation_kind = observation
        self.max_question_tokens = int(max_question_tokens)
        self.render_mode = render_mode
        # The oracle's call and cache counters are cumulative, shared state: with them in `info`, two
        # identical steps differ (the second is a cache hit). check_env's determinism check needs False.
        self.counters_in_info = counters_in_info
        self.action_space = spaces.MultiDiscrete([len(self.vocab)] * self.prompt_length)
        if observation == "features":
            self.observation_space = spaces.Box(-np.inf, np.inf, (self.llm.hidden_size,), np.float32)
        elif observation == "tokens":
            self.observation_space = spaces.Box(0, len(self.llm.tokenizer) - 1, (self.max_question_tokens,), np.int64)
        else:
            raise ValueError("observation must be 'features' or 'tokens'")
        self._features: dict[str, np.ndarray] = {}
        self._problem: Problem | None = None
        self._last_info: dict = {}

    # ---- observations --------------------------------------------------------------------------

    def observe(self, problems: Sequence[Problem]) -> np.ndarray:
        """Observations for several problems at once (features are computed once per problem)."""
        if self.observation_kind == "tokens":
            out = np.full((len(problems), self.max_question_tokens), self.llm.tokenizer.pad_token_id, np.int64)
            for i, problem in enumerate(problems):
                ids = self.llm.tokenizer(problem.question, add_special_tokens=False)["input_ids"]
                ids = ids[: self.max_question_tokens]
                out[i, : len(ids)] = ids
            return out
        for problem in dict.fromkeys(problems):
            if problem.id not in self._features:
                # The seed's Refiner input: the question as the LLM sees it without a prompt. One
                # question per forward pass, so its features never depend on its batch-mates (padded
                # batches differ in the last bits), which keeps runs and resumes bitwise reproducible.
                text = self.llm.render("", problem.question)
                self._features[problem.id] = self.llm.features([text])[0].numpy().astype(np.float32)
        return np.stack([self._features[p.id] for p in problems])

    # ---- the batched fast path -----------------------------------------------------------------

    def prompt_texts(self, actions: np.ndarray) -> list[str]:
        return [self.vocab.decode(row) for row in np.asarray(actions).reshape(-1, self.prompt_length)]

    def score(self, problems: Sequence[Problem], actions: np.ndarray, *, prompts: Sequence[str] | None = None,
              seed: int | None = None, batch_label: str = "") -> tuple[np.ndarray, list[dict]]:
        """Rewards and infos for many (problem, prompt) pairs in one oracle call.

        `prompts` (text) may replace `actions`, for hand-written baselines scored the same way.
        """
        if prompts is None:
            prompts = self.prompt_texts(actions)
        totals, infos = score_pairs(self.llm, self.reward_mix, problems, prompts, self.decoding, seed=seed,
                                    batch_label=batch_label)
        if self.counters_in_info:
            stats = self.llm.stats
            for info in infos:
                info.update(oracle_calls=stats.generate_calls, oracle_rows=stats.generated_rows,
                            cache_hits=stats.cache_hits)
        return totals, infos

    # ---- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "problem_index" in options:
            index = int(options["problem_index"])
        else:
            index = int(self.np_random.integers(len(self.problems)))
        self._problem = self.problems[index]
        return self.observe([self._problem])[0], {"problem_id": self._problem.id, "question": self._problem.question}

    def step(self, action):
        if self._problem is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.int64).reshape(1, self.prompt_length)
        # Sampling decodes draw on np_random, so a seeded env is reproducible at any temperature.
        seed = int(self.np_random.integers(2**31 - 1)) if self.decoding.temperature > 0 else None
        rewards, infos = self.score([self._problem], action, seed=seed)
        self._last_info = infos[0]
        observation = self.observe([self._problem])[0]
        return observation, float(rewards[0]), True, False, infos[0]

    def render(self):
        if self.render_mode == "ansi" and self._last_info:
            info = self._last_info
            return (f"Q: {info['question']}\nprompt: {info['prompt']!r}\nA: {info['completion']!r}\n"
                    f"extracted {info['extracted']!r} vs gold {info['gold']!r}: "
                    f"{'correct' if info['correct'] else 'wrong'}")
        return None


class PromptRefineSeqEnv(gym.Env):
    """The prompt built one token per step; the reward comes after the last token.

    Observation: {"question": features (or token ids), "prompt": the action indices chosen so far,
    with `len(vocab)` marking empty slots}. Action: one index into the action vocabulary.
    """

    metadata = PromptRefineEnv.metadata

    def __init__(self, llm=None, dataset=None, **kwargs):
        self.base = PromptRefineEnv(llm, dataset, **kwargs)
        self.vocab = self.base.vocab
        self.prompt_length = self.base.prompt_length
        self.action_space = spaces.Discrete(len(self.vocab))
        self.observation_space = spaces.Dict({
            "question": self.base.observation_space,
            "prompt": spaces.MultiDiscrete([len(self.vocab) + 1] * self.prompt_length)})
        self._chosen: list[int] = []
        self._question = None

    def _obs(self):
        prompt = np.full(self.prompt_length, len(self.vocab), np.int64)
        prompt[: len(self._chosen)] = self._chosen
        return {"question": self._question.copy(), "prompt": prompt}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.base.np_random = self.np_random  # one random stream for problems and sampling
        self._question, info = self.base.reset(options=options)
        self._chosen = []
        return self._obs(), info

    def step(self, action):
        self._chosen.append(int(action))
        if len(self._chosen) < self.prompt_length:
            return self._obs(), 0.0, False, False, {}
        _, reward, _, _, info = self.base.step(np.asarray(self._chosen))
        return self._obs(), reward, True, False, info
