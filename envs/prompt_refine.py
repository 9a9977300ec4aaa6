"""Gymnasium environments: the frozen LLM as a reward oracle for discrete prompts.

`PromptRefineEnv` (a contextual bandit): `reset` draws a problem and observes its question
(hidden-state features from the engine, or token ids); the action is one index per slot of the prompt
space (`prompt_space.PromptSpace`: exemplar slots and the answer form when `shots` > 0, then
`prompt_length` indices into the action vocabulary), one `MultiDiscrete(space.nvec)`; `step` decodes
it to a prompt, renders it with the question, asks the oracle, grades the completion with the
configured reward functions, and ends the episode.

`PromptRefineSeqEnv`: the same task one token per step, the reward arriving at the last token
(instruction slots only).

Our agents use the batched fast path `PromptRefineEnv.score(problems, actions)`; `step` is that
same call on one pair, so both give the same reward.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlprompt_math.config import DataConfig, OracleConfig, PolicyConfig, RunConfig
from rlprompt_math.data import Problem, load_problems, problems_from_config, split_problems
from rlprompt_math.engines import Engine
from rlprompt_math.exemplars import ExemplarPool
from rlprompt_math.oracle import Decoding, score_pairs
from rlprompt_math.prompt_space import PromptSpace, draw_pool
from rlprompt_math.rewards import RewardMix
from rlprompt_math.templates import PromptLike
from rlprompt_math.vocab import ActionVocab


class PromptRefineEnv(gym.Env):
    """One episode = one problem and one prompt. See the module docstring.

    Built from loaded objects (shared, never copied); `assemble_env` builds one from a loaded engine and
    settings, `make_env` (the registered entry point) also loads the engine and problems by name. `space`
    (a PromptSpace over `vocab`) gives the action's slots; without it, the space is `prompt_length`
    instruction slots of `vocab` (default PolicyConfig.prompt_length).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, engine: Engine, problems: Sequence[Problem], vocab: ActionVocab, reward_mix: RewardMix,
                 decoding: Decoding = Decoding(), *, prompt_length: int | None = None, space: PromptSpace | None = None,
                 observation: str = "features", max_question_tokens: int = 128, counters_in_info: bool = False,
                 render_mode: str | None = None):
        if space is None:
            space = PromptSpace(vocab, PolicyConfig.prompt_length if prompt_length is None else prompt_length)
        elif space.vocab is not vocab or prompt_length not in (None, space.prompt_length):
            raise ValueError("the prompt space's vocabulary and prompt length must be the env's")
        self.engine, self.vocab, self.reward_mix, self.decoding = engine, vocab, reward_mix, decoding
        self.space = space
        self.problems = list(problems)
        if not self.problems:
            raise ValueError("the environment needs at least one problem")
        self.prompt_length = space.prompt_length
        self.observation_kind = observation
        self.max_question_tokens = int(max_question_tokens)
        self.render_mode = render_mode
        # The engine's call and cache counters are cumulative, process-wide state: in `info`, two
        # identical steps would differ (the second is a cache hit) and check_env's determinism check
        # fails. They are read with `engine_stats()`; `counters_in_info=True` also puts them in `info`.
        self.counters_in_info = counters_in_info
        self.action_space = spaces.MultiDiscrete(space.nvec)
        if observation == "features":
            self.observation_space = spaces.Box(-np.inf, np.inf, (self.engine.hidden_size,), np.float32)
        elif observation == "tokens":
            self.observation_space = spaces.Box(0, len(self.engine.tokenizer) - 1, (self.max_question_tokens,),
                                                np.int64)
        else:
            raise ValueError("observation must be 'features' or 'tokens'")
        self._features: dict[str, np.ndarray] = {}
        self._problem: Problem | None = None
        self._last_info: dict = {}

    def engine_stats(self) -> dict:
        """The engine's cumulative counters, as `counters_in_info` puts them in `info` (process-wide: shared
        by every env on this engine)."""
        stats = self.engine.stats
        return {"oracle_calls": stats.generate_calls, "oracle_rows": stats.generated_rows,
                "cache_hits": stats.cache_hits}

    # ---- observations --------------------------------------------------------------------------

    def observe(self, problems: Sequence[Problem]) -> np.ndarray:
        """Observations for several problems at once (features are computed once per problem)."""
        if self.observation_kind == "tokens":
            out = np.full((len(problems), self.max_question_tokens), self.engine.tokenizer.pad_token_id, np.int64)
            for i, problem in enumerate(problems):
                ids = self.engine.tokenizer(problem.question, add_special_tokens=False)["input_ids"]
                ids = ids[: self.max_question_tokens]
                out[i, : len(ids)] = ids
            return out
        for problem in dict.fromkeys(problems):
            if problem.id not in self._features:
                # The seed's Refiner input: the question as the LLM sees it without a prompt.
                features = self.engine.question_features([problem.question])[0]
                self._features[problem.id] = features.numpy().astype(np.float32)
        return np.stack([self._features[p.id] for p in problems])

    # ---- the batched fast path -----------------------------------------------------------------

    def prompt_texts(self, actions: np.ndarray) -> list[PromptLike]:
        """The prompt each action row means (text, or a `Prompt` with exemplars): `space.decode`."""
        return [self.space.decode(row) for row in np.asarray(actions).reshape(-1, len(self.space))]

    def score(self, problems: Sequence[Problem], actions: np.ndarray, *, prompts: Sequence[PromptLike] | None = None,
              seed: int | None = None, batch_label: str = "") -> tuple[np.ndarray, list[dict]]:
        """Rewards and infos for many (problem, prompt) pairs in one oracle call.

        `prompts` (text or `Prompt`s) may replace `actions`, for reference prompts scored the same way.
        """
        if prompts is None:
            prompts = self.prompt_texts(actions)
        totals, infos = score_pairs(self.engine, self.reward_mix, problems, prompts, self.decoding, seed=seed,
                                    batch_label=batch_label)
        if self.counters_in_info:
            stats = self.engine_stats()
            for info in infos:
                info.update(stats)
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
        action = np.asarray(action, dtype=np.int64).reshape(1, len(self.space))
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

    def __init__(self, base: PromptRefineEnv):
        if base.space.shots:
            raise ValueError("the token-by-token env writes instruction tokens only: use PromptRefineEnv (one "
                             "MultiDiscrete action) for exemplar slots")
        self.base = base
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


# ---- the one constructor, and the factory that loads by name (the registered entry points) --------


def assemble_env(engine: Engine, problems: Sequence[Problem], *, pool: ExemplarPool | None = None,
                 prompt_length: int = PolicyConfig.prompt_length,
                 action_vocab: ActionVocab | str = PolicyConfig.action_vocab,
                 empty_action: bool = PolicyConfig.empty_action, rewards: Sequence | RewardMix = OracleConfig.rewards,
                 decoding: Decoding = Decoding(), shots: int = 0,
                 answer_forms: Sequence[str] = PolicyConfig.answer_forms, **env_kwargs) -> PromptRefineEnv:
    """The one constructor of the environment from a loaded engine and problems: the action vocabulary
    (a spec, or an `ActionVocab`), the rewards (specs, or a `RewardMix`), the prompt space and the env.
    `train.build_env` (a run's settings), `make_env` (the Gymnasium registry) and users by hand all come
    here. With `pool` (see `prompt_space.draw_pool`), `shots` exemplar slots over it and `answer_forms`;
    without, instruction slots only. Other keyword arguments go to `PromptRefineEnv`.

    A served engine may give no prompt log-probabilities: with a reward that reads them, it is asked
    once here, so the refusal comes before the first step (EngineCapabilityError)."""
    vocab = (action_vocab if isinstance(action_vocab, ActionVocab)
             else ActionVocab.from_spec(engine.tokenizer, action_vocab, empty=empty_action))
    reward_mix = rewards if isinstance(rewards, RewardMix) else RewardMix(list(rewards), engine=engine)
    if reward_mix.needs_engine and engine.kind != "transformers" and problems:
        engine.answer_logprobs([engine.render("", problems[0].question)], [problems[0].answer])
    space = (PromptSpace(vocab, prompt_length, pool, shots, answer_forms) if pool is not None
             else PromptSpace(vocab, prompt_length))
    return PromptRefineEnv(engine, problems, vocab, reward_mix, decoding, space=space, **env_kwargs)


def _problems(dataset, split: str | None, split_seed: int) -> tuple[list[Problem], dict[str, list[Problem]]]:
    """(the problems `split` asks for, every hashed split of the dataset)."""
    if dataset is None:  # the built-in generator with the default data settings
        problems, splits, _ = problems_from_config(DataConfig(), split_seed)
    else:
        problems = load_problems(dataset)[0] if isinstance(dataset, str) else list(dataset)
        splits = split_problems(problems, split_seed)
    if split in (None, "all"):
        return problems, splits
    chosen = splits[split]
    if not chosen:
        raise ValueError(f"the {split!r} split is empty ({len(problems)} problems in all)")
    return chosen, splits


def make_env(engine: Engine | str | None = None, dataset: str | Sequence[Problem] | None = None, *,
             seed: int = RunConfig.seed, prompt_length: int = PolicyConfig.prompt_length,
             action_vocab: ActionVocab | str = PolicyConfig.action_vocab,
             empty_action: bool = PolicyConfig.empty_action, rewards: Sequence | RewardMix = OracleConfig.rewards,
             max_new_tokens: int = OracleConfig.max_new_tokens, stop_at_answer: bool = OracleConfig.stop_at_answer,
             temperature: float = Decoding.temperature, stop: Sequence[str] | None = None,
             split: str | None = "train", split_seed: int | None = None, shots: int = 0,
             exemplar_pool: int = PolicyConfig.exemplar_pool, answer_forms: Sequence[str] = PolicyConfig.answer_forms,
             **env_kwargs) -> PromptRefineEnv:
    """A PromptRefineEnv from names and settings: loads what is not loaded yet, then `assemble_env`.

    `engine`: a loaded engine (shared) or a model name/path (None: the default model, in process). `dataset`:
    problems, a file or hub id, or None for the built-in generator; `split` picks one of its hashed
    splits (None or "all": every problem), hashed with `split_seed` (default: `seed`, as a run splits).
    `shots` > 0 adds exemplar slots over `exemplar_pool` problems of the dataset's training split (never
    validation or test, whatever `split` is), drawn with `seed`: the pool a training run with that --seed
    draws. (Before, the pool was drawn with `split_seed`.) Other keyword arguments go to `PromptRefineEnv`.
    """
    if not isinstance(engine, Engine):
        from rlprompt_math.engines.transformers import TransformersEngine

        engine = TransformersEngine.load(engine)
    decoding = Decoding(max_new_tokens=int(max_new_tokens), temperature=float(temperature), stop=tuple(stop or ()),
                        stop_at_answer=bool(stop_at_answer))
    problems, splits = _problems(dataset, split, seed if split_seed is None else split_seed)
    pool = None
    if shots:
        pool, _ = draw_pool(splits, size=exemplar_pool, seed=seed, forms=answer_forms, engine=engine,
                            decoding=decoding)
    return assemble_env(engine, problems, pool=pool, prompt_length=prompt_length, action_vocab=action_vocab,
                        empty_action=empty_action, rewards=rewards, decoding=decoding, shots=shots,
                        answer_forms=answer_forms, **env_kwargs)


def make_seq_env(engine=None, dataset=None, **kwargs) -> PromptRefineSeqEnv:
    """A PromptRefineSeqEnv over `make_env(engine, dataset, **kwargs)`."""
    return PromptRefineSeqEnv(make_env(engine, dataset, **kwargs))


make_env.metadata = make_seq_env.metadata = PromptRefineEnv.metadata
