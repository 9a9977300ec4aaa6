"""The equal-budget rule: what a run spends in oracle pairs is planned once (`agents.oracle_pairs_planned`), and
the pairs runs actually send to the oracle are counted against it, so benches that compare learners "at the same
budget" compare them at the same pairs."""

import copy

import numpy as np
import pytest
import torch

import rlprompt_math.train as training
from rlprompt_math.agents import AGENTS, RandomSearchAgent, check_config, oracle_pairs_planned
from rlprompt_math.config import RunConfig
from rlprompt_math.data import Problem
from rlprompt_math.exemplars import ExemplarPool
from rlprompt_math.prompt_space import PromptSpace

EQUAL_BUDGET = [name for name, cls in AGENTS.items() if cls.equal_budget]


class NumberVocab:
    """Actions are numbers; a prompt's instruction is their text."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def decode(self, actions):
        return " ".join(map(str, actions))


class CountingEnv:
    """An env-like oracle double that counts every (prompt, question) pair it is asked to score. Its prompt space
    has one exemplar slot over a pool of three of its questions (answers bare: no completions to ask for), so
    every equal-budget agent runs at the same settings, knn's retrieval included; it is its own engine for the
    pool's features. Every question has the same features (the cluster agent finds one cluster here; its
    clusters' shares of the budget: tests/test_conditioned_baselines.py)."""

    def __init__(self, vocab_size=40, length=2, questions=12):
        self.vocab, self.prompt_length = NumberVocab(vocab_size), length
        self.problems = [Problem(str(i), f"q{i}", "0") for i in range(questions)]
        self.space = PromptSpace(self.vocab, length, ExemplarPool(self.problems[:3]), shots=1, forms=("bare",))
        self.engine = self
        self.pairs = 0

    def question_features(self, questions):
        return torch.ones(len(questions), 4)

    def observe(self, problems):
        return np.ones((len(problems), 4), np.float32)

    def score(self, problems, actions, prompts=None, batch_label=""):
        if prompts is None:
            prompts = [self.space.decode(a) for a in actions]
        self.pairs += len(problems)
        totals = np.array([sum(map(ord, str(p))) for p in prompts])  # a reward that tells prompts apart
        rewards = (totals % 7) / 7 + np.array([len(p.question) / 100 for p in problems])
        infos = [{"correct": bool(t % 3 == 0), "prompt": str(prompt), "question": p.question,
                  "completion": "", "extracted": None, "gold": "0"} for t, prompt, p in zip(totals, prompts, problems)]
        return rewards, infos


def _config(agent, **settings):
    return RunConfig.from_flat({"agent": agent, "shots": 1, "answer_forms": ["bare"], "exemplar_pool": 3,
                                "prompt_length": 2, **settings})


def _equalised(name, reinforce: RunConfig) -> RunConfig:
    """A learner's settings at REINFORCE's budget: the same settings, and where the agent tunes its budget by its
    finalists (random search, knn and cluster), as many as make the pairs equal."""
    config, cls = copy.deepcopy(reinforce), AGENTS[name]
    config.agent = name
    if hasattr(cls, "finalists_for"):
        config.algorithm.finalists = cls.finalists_for(oracle_pairs_planned(reinforce), config)
    return check_config(config)


@pytest.mark.parametrize("settings", [
    {"steps": 4, "eval_every": 2, "batch_size": 3, "prompts_per_question": 2, "val_size": 5, "finalists": 0},
    {"steps": 5, "eval_every": 0, "batch_size": 2, "prompts_per_question": 3, "val_size": 4, "finalists": 2},
    {"steps": 30, "eval_every": 10, "batch_size": 2, "prompts_per_question": 2, "val_size": 3, "finalists": 0},
    {"steps": 7, "eval_every": 3, "batch_size": 4, "prompts_per_question": 2, "val_size": 2, "finalists": 3},
])
def test_learners_on_an_equal_budget_send_the_oracle_the_same_pairs(settings):
    reinforce = _config("reinforce", **settings)
    counted = {}
    for name in EQUAL_BUDGET:
        config = _equalised(name, reinforce)
        env = CountingEnv()
        val = [Problem(f"v{i}", f"v{i}", "0") for i in range(config.val_size)]
        agent = AGENTS[name].from_config(config, env, engine=None, val_problems=val)
        summary = agent.train(progress=False)
        assert env.pairs == summary["oracle_pairs"] == oracle_pairs_planned(config), name
        counted[name] = env.pairs
    assert set(EQUAL_BUDGET) >= {"reinforce", "random", "knn", "cluster"}
    assert len(set(counted.values())) == 1, counted


def test_random_search_gets_as_many_finalists_as_reinforce_validates():
    """The untrained validation counts: at 30 steps validated every 10, REINFORCE validates 4 times (untrained,
    steps 10, 20, 30), so random search needs 4 finalists, not the 3 a count of the every-10-steps points gives.
    The conditioning bench's settings (2 exemplar slots over a pool of 32, with the model's own completions)."""
    settings = {"steps": 30, "eval_every": 10, "batch_size": 8, "prompts_per_question": 8, "val_size": 60,
                "shots": 2, "exemplar_pool": 32, "finalists": 0}
    reinforce = RunConfig.from_flat({**settings, "agent": "reinforce"})
    search = RunConfig.from_flat({**settings, "agent": "random"})
    assert oracle_pairs_planned(reinforce) == 32 + 30 * 8 * 8 + 4 * 60 == 2192
    assert RandomSearchAgent.finalists_for(2192, search) == 4
    search.algorithm.finalists = 3  # the rule the bench had: 60 pairs short
    assert oracle_pairs_planned(search) == 2132
    with pytest.raises(ValueError, match="no number of finalists"):
        RandomSearchAgent.finalists_for(2192 + 1, search)


@pytest.fixture
def generate_rows(tiny_engine, monkeypatch):
    """The rows the engine is asked to complete, every one counted (cached or not): the oracle pairs sent."""
    sent = []
    generate = tiny_engine.generate
    monkeypatch.setattr(tiny_engine, "generate",
                        lambda texts, **kw: (sent.append(len(texts)), generate(texts, **kw))[1])
    return sent


FAST = {"steps": 3, "eval_every": 2, "batch_size": 2, "prompts_per_question": 2, "val_size": 3, "exemplar_pool": 4,
        "max_new_tokens": 4, "num_problems": 80, "prompt_length": 2, "no_final_eval": True, "quiet": True}


@pytest.mark.parametrize("agent", ["reinforce", "random", "fixed", "pez", "knn", "cluster"])
def test_a_run_spends_what_its_plan_says(agent, tiny_engine, generate_rows, tmp_path):
    """Through the one wiring, exemplar pool completions (reinforce, random, knn, cluster: 2 slots by default, the
    completion form among the answer forms) and finalists included; REINFORCE keeps a finalist, the agents that
    tune their budget by their finalists (random search, knn, cluster) get its pairs."""
    reinforce = RunConfig.from_flat({**FAST, "finalists": 1, "output_dir": str(tmp_path), "name": "reinforce"})
    config = RunConfig.from_flat({**FAST, "agent": agent, "output_dir": str(tmp_path), "name": agent})
    if agent == "reinforce":
        config = reinforce
    elif hasattr(AGENTS[agent], "finalists_for"):
        config.algorithm.finalists = AGENTS[agent].finalists_for(oracle_pairs_planned(reinforce), config)
    planned = oracle_pairs_planned(config)
    built = training.build(config, engine=tiny_engine, log=lambda _: None)
    summary = built.agent.train(progress=False)
    assert sum(generate_rows) == summary["oracle_pairs"] == planned
    if AGENTS[agent].equal_budget:
        assert planned == oracle_pairs_planned(reinforce) == 4 + 3 * 2 * 2 + (3 + 1) * 3  # pool, steps, validations
