"""The equal-budget rule: what a run spends in oracle pairs is planned once (`agents.oracle_pairs_planned`), and
the pairs runs actually send to the oracle are counted against it, so benches that compare learners "at the same
budget" compare them at the same pairs. The hard cap, --max-oracle-pairs: a plan over it is refused before
anything loads, and a run whose real pairs would pass it stops short of it."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from conftest import OWN_TARGETS, ToyVocab, route_run

import rlprompt_math.train as training
from rlprompt_math.agents import AGENTS, RandomSearchAgent, check_config, describe_plan, oracle_pairs_planned
from rlprompt_math.checkpoint import POLICY_BEST, SUMMARY
from rlprompt_math.config import ConfigError, RunConfig
from rlprompt_math.data import Problem
from rlprompt_math.exemplars import ExemplarPool
from rlprompt_math.prompt_space import PromptSpace

EQUAL_BUDGET = [name for name, cls in AGENTS.items() if cls.equal_budget]


class CountingEnv:
    """An env-like oracle double that counts every (prompt, question) pair it is asked to score. Its prompt space
    has one exemplar slot over a pool of three of its questions (answers bare: no completions to ask for), so
    every equal-budget agent runs at the same settings, knn's retrieval included; it is its own engine for the
    pool's features. Every question has the same features (the cluster agent finds one cluster here; its
    clusters' shares of the budget: tests/test_conditioned_baselines.py)."""

    def __init__(self, vocab_size=40, length=2, questions=12):
        self.vocab, self.prompt_length = ToyVocab(vocab_size), length
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
    assert set(EQUAL_BUDGET) >= {"reinforce", "random", "knn", "cluster", "halving", "tpe"}
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


@pytest.mark.parametrize("agent", ["reinforce", "random", "fixed", "pez", "knn", "cluster", "halving", "tpe"])
def test_a_run_spends_what_its_plan_says(agent, tiny_engine, generate_rows, tmp_path):
    """Through the one wiring, exemplar pool completions (reinforce, random, knn, cluster: 2 slots by default, the
    completion form among the answer forms) and finalists included; REINFORCE keeps a finalist, the agents that
    tune their budget by their finalists (random search, knn, cluster, halving) get its pairs."""
    reinforce = RunConfig.from_flat({**FAST, "finalists": 1, "output_dir": str(tmp_path), "name": "reinforce"})
    # REINFORCE's settings (TPE spends its plan at them, its finalists full evaluations at the end)
    config = RunConfig.from_flat({**FAST, "finalists": 1, "agent": agent, "output_dir": str(tmp_path), "name": agent})
    if agent == "reinforce":
        config = reinforce
    elif hasattr(AGENTS[agent], "finalists_for"):
        config.algorithm.finalists = AGENTS[agent].finalists_for(oracle_pairs_planned(reinforce), config)
    planned = oracle_pairs_planned(config)
    config.algorithm.max_oracle_pairs = planned  # a cap the plan meets exactly: the run is not cut short
    lines = []
    built = training.build(config, engine=tiny_engine, log=lines.append)
    summary = built.agent.train(progress=False)
    assert sum(generate_rows) == summary["oracle_pairs"] == planned and "stopped" not in summary
    assert lines[0] == f"oracle pairs planned: {describe_plan(config)}"  # the header, before the problems' line
    assert lines[0].startswith(f"oracle pairs planned: {planned:,} (") and f"at most {planned:,}" in lines[0]
    if AGENTS[agent].equal_budget:
        assert planned == oracle_pairs_planned(reinforce) == 4 + 3 * 2 * 2 + (3 + 1) * 3  # pool, steps, validations


# ---- the hard cap: --max-oracle-pairs -------------------------------------------------------------------


def test_a_plan_over_the_cap_is_refused_before_anything_loads(tmp_path, monkeypatch):
    settings = {"steps": 30, "eval_every": 10, "batch_size": 8, "prompts_per_question": 8, "val_size": 100,
                "output_dir": str(tmp_path / "runs"), "model": str(tmp_path / "no-model-here")}
    planned = oracle_pairs_planned(RunConfig.from_flat(settings))
    assert planned == 32 + 30 * 8 * 8 + 4 * 100  # the default exemplar pool, the steps, 4 validations
    for step in ("problems_from_config", "load_engine"):  # a refusal reaches neither
        monkeypatch.setattr(training, step, lambda *a, **k: pytest.fail("the refused run went on to load"))
    with pytest.raises(ConfigError) as refused:
        training.build(RunConfig.from_flat({**settings, "max_oracle_pairs": 2000}), log=lambda _: None)
    message = str(refused.value)
    assert "\n" not in message and "--max-oracle-pairs 2,000" in message
    assert "2,352 (32 pool + 1,920 training + 4 validations x 100)" in message and "--steps" in message
    assert not (tmp_path / "runs").exists()
    check_config(RunConfig.from_flat({**settings, "max_oracle_pairs": planned}))  # the plan itself fits


@pytest.mark.parametrize("cap", [20, 30])
@pytest.mark.parametrize("name", EQUAL_BUDGET)
def test_an_agent_never_sends_pairs_past_the_cap(name, cap):
    """The backstop in the loop, for an agent built directly (`from_config`: no plan check, as a Python user or a
    bench builds one) with a cap below its plan (49 pairs for REINFORCE, 34 for the searches): it stops before
    the step, validation or finalist that would pass the cap, and still keeps a prompt."""
    config = _config(name, steps=4, eval_every=2, batch_size=3, prompts_per_question=2, val_size=5, finalists=2)
    assert oracle_pairs_planned(config) > cap
    config.algorithm.max_oracle_pairs = cap
    env = CountingEnv()
    val = [Problem(f"v{i}", f"v{i}", "0") for i in range(config.val_size)]
    agent = AGENTS[name].from_config(config, env, engine=None, val_problems=val)
    summary = agent.train(progress=False)
    assert env.pairs == summary["oracle_pairs"] <= cap and summary["stopped"] == "max_oracle_pairs"
    # (steps, pairs): REINFORCE (and TPE, on its schedule) validates untrained (5), then steps of 6 pairs, steps 2 and
    # 4 with a validation (5), and its finalists 5 each (at 20: one after step 1; at 30: none after step 3); the
    # searches spend 6 a step and 5 a finalist (at 30: all 4 steps and one of the 2 finalists)
    expected = {20: (1, 16), 30: (3, 28)} if name in ("reinforce", "tpe") else {20: (3, 18), 30: (4, 29)}
    assert (summary["steps"], summary["oracle_pairs"]) == expected[cap]
    assert agent.greedy_prompts(val[:1])  # a prompt is kept


def test_a_run_whose_pairs_are_known_only_as_it_runs_stops_at_the_cap(tiny_engine, answerable, generate_rows,
                                                                      tmp_path):
    """--loss-target own asks for completions until it has targets, so no plan knows its pairs (the header says
    so) and nothing refuses it beforehand; the cap holds it. Untrained validation 3 pairs, the init text's
    completions 40 (the next reference prompt's 30 would pass the cap: training goes on with the 10 targets
    found), step 2's validation 3: 46; step 4's validation would make 49."""
    problems, _ = answerable
    splits = {"train": problems, "validation": problems[:3], "test": problems[:4]}
    config = RunConfig.from_flat({**route_run("pez", **OWN_TARGETS), "max_oracle_pairs": 46, "no_final_eval": True,
                                  "output_dir": str(tmp_path), "name": "capped"})
    lines = []
    result = training.train(config, engine=tiny_engine, splits=splits, log=lines.append)
    summary = result.summary
    assert lines[0].startswith("oracle pairs planned: not known before the run (--loss-target own")
    assert sum(generate_rows) == summary["oracle_pairs"] == 46
    assert summary["stopped"] == "max_oracle_pairs" and summary["steps"] == 3
    assert len(result.built.agent.own_targets) == 10
    assert any(line.startswith("stopped at step 3 of 4") and "--max-oracle-pairs 46" in line for line in lines)
    saved = json.loads((result.run_dir / SUMMARY).read_text())
    assert saved["stopped"] == "max_oracle_pairs" and saved["oracle_pairs"] <= 46
    assert math.isfinite(saved["best_val_accuracy"]) and (result.run_dir / POLICY_BEST).exists()  # the best so far
