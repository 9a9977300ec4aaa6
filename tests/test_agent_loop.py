"""The loop every agent shares (agents/base.py): callbacks, resume of random search, state files, the registry."""

import csv

import numpy as np
import pytest
import torch

import rlprompt_math.train as training
from rlprompt_math.agents import AGENTS, Agent, AlgorithmConfig, RandomSearchAgent, ReinforceAgent
from rlprompt_math.checkpoint import (
    METRICS,
    POLICY_BEST,
    POLICY_FORMAT,
    POLICY_LAST,
    SAMPLES,
    STATE_LAST,
    load_policy,
    load_state,
    read,
    save_state,
)
from rlprompt_math.config import RunConfig
from rlprompt_math.data import Problem, generate_problems
from rlprompt_math.policies import Unconditioned
from rlprompt_math.runlog import RunDir


class ToyVocab:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def decode(self, actions):
        return " ".join(map(str, actions))

    def to_dict(self):
        return {"size": self.n}


class ToyEngine:
    def fingerprint(self):
        return {"model": "toy"}


class ToyEnv:
    """Reward = share of slots on the target arm + a per-question offset; no noise, so reruns are exact."""

    def __init__(self, vocab_size=6, length=2, target=(3, 5)):
        self.vocab, self.prompt_length, self.engine = ToyVocab(vocab_size), length, ToyEngine()
        self.target = np.array(target)
        self.problems = [Problem(str(i), f"q{i}", "0") for i in range(12)]

    def observe(self, problems):
        return np.ones((len(problems), 4), np.float32)

    def score(self, problems, actions, prompts=None, batch_label=""):
        if actions is None:  # validation passes prompt texts
            actions = [[int(x) for x in p.split()] for p in prompts]
        actions = np.asarray(actions)
        match = (actions == self.target).mean(1)
        rewards = match + np.array([int(p.id) / 100 for p in problems])
        infos = [{"correct": bool(m == 1), "prompt": self.vocab.decode(a), "question": p.question, "completion": "",
                  "extracted": None, "gold": "0"} for m, a, p in zip(match, actions, problems)]
        return rewards, infos


def _config(**settings):
    return AlgorithmConfig(**{"batch_size": 3, "prompts_per_question": 2, **settings})


# ---- callbacks ------------------------------------------------------------------------------------------


def test_a_callback_is_called_once_per_step_with_its_metrics():
    seen = []
    agent = ReinforceAgent(ToyEnv(), Unconditioned(2, 6), _config(steps=5, eval_every=2),
                           val_problems=ToyEnv().problems[:4])
    agent.train(progress=False, callbacks=[lambda agent, metrics: seen.append((agent.step, metrics))])
    assert [step for step, _ in seen] == [1, 2, 3, 4, 5]  # called after each step is done
    assert [metrics for _, metrics in seen] == agent.history  # with the step's logged metrics, validation included
    assert [m["step"] for _, m in seen] == [0, 1, 2, 3, 4] and "val_accuracy" in seen[1][1]


def test_a_callback_can_stop_training(tmp_path):
    class StopAfter:  # an object with __call__ works as well as a function
        def __init__(self, step):
            self.step, self.calls = step, 0

        def __call__(self, agent, metrics):
            self.calls += 1
            return metrics["step"] == self.step

    stop, later = StopAfter(2), []
    env = ToyEnv()
    agent = RandomSearchAgent(env, _config(steps=10, checkpoint_every=5, finalists=2), run=RunDir(tmp_path),
                              val_problems=env.problems[:4])
    summary = agent.train(progress=False, callbacks=[stop, lambda agent, metrics: later.append(metrics["step"])])
    assert stop.calls == 3 and later == [0, 1, 2]  # every callback sees the stopping step
    assert summary["steps"] == agent.step == len(agent.history) == 3
    with open(tmp_path / METRICS, newline="") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [0, 1, 2]
    assert load_state(tmp_path / STATE_LAST)[1]["step"] == 3  # the stop is checkpointed: --resume continues from it
    # The end still runs: two finalists compared on the 4 validation questions, the best kept.
    assert summary["oracle_pairs"] == 3 * 3 * 2 + 2 * 4
    _, meta = read(tmp_path / POLICY_BEST, POLICY_FORMAT)
    assert meta["policy"]["actions"] == agent.policy.actions and meta["step"] == 3


# ---- resume ---------------------------------------------------------------------------------------------

FAST = {"agent": "random", "dtype": "float32", "steps": 5, "batch_size": 2, "prompts_per_question": 2, "val_size": 3,
        "test_size": 4, "checkpoint_every": 2, "finalists": 2, "max_new_tokens": 4, "num_problems": 100, "quiet": True,
        "no_final_eval": True}


def _rows(run, name):
    with open(run / name, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(handle)]


def test_random_search_resumes_to_the_same_result(tiny_model_dir, tiny_engine, tmp_path):
    settings = {**FAST, "model": str(tiny_model_dir), "output_dir": str(tmp_path)}
    whole = training.build(RunConfig.from_flat({**settings, "name": "whole"}), engine=tiny_engine, log=lambda _: None)
    whole_summary = whole.agent.train(progress=False)
    part = training.build(RunConfig.from_flat({**settings, "name": "part"}), engine=tiny_engine, log=lambda _: None)
    real_update = part.agent.update

    def crash_at_step_3():
        if part.agent.step == 3:  # after the checkpoint of step 2, mid-way to the next
            raise KeyboardInterrupt
        return real_update()

    part.agent.update = crash_at_step_3
    with pytest.raises(KeyboardInterrupt):
        part.agent.train(progress=False)
    resumed = training.build(training.resume_config(tmp_path / "part", quiet=True), engine=tiny_engine,
                             log=lambda _: None)
    assert resumed.agent.step == 2
    summary = resumed.agent.train(progress=False)

    assert resumed.agent.prompt_rewards == whole.agent.prompt_rewards  # every candidate, with every reward
    assert {k: v for k, v in summary.items() if k != "wall_s"} == {k: v for k, v in whole_summary.items()
                                                                   if k != "wall_s"}
    assert _rows(tmp_path / "part", METRICS) == _rows(tmp_path / "whole", METRICS)
    assert len(_rows(tmp_path / "part", METRICS)) == 5
    samples = [(tmp_path / run / SAMPLES).read_text() for run in ("whole", "part")]
    assert samples[0] == samples[1] and samples[0]
    for name in (POLICY_BEST, POLICY_LAST):  # the kept prompt
        kept = [load_policy(tmp_path / run / name, tiny_engine)[0] for run in ("whole", "part")]
        assert (kept[0].text, kept[0].actions) == (kept[1].text, kept[1].actions)


# ---- state files ----------------------------------------------------------------------------------------


def test_a_state_file_loads_only_into_its_agent(tmp_path):
    env = ToyEnv()
    RandomSearchAgent(env, _config(steps=2), run=RunDir(tmp_path / "random")).train(progress=False)
    with pytest.raises(ValueError, match="holds a random run, not reinforce"):
        ReinforceAgent(env, Unconditioned(2, 6), _config(steps=2)).load_state(tmp_path / "random" / STATE_LAST)

    # REINFORCE's state files from before the agent's name was recorded still load.
    trained = ReinforceAgent(env, Unconditioned(2, 6), _config(steps=2, lr=0.5), run=RunDir(tmp_path / "old"))
    trained.train(progress=False)
    path = tmp_path / "old" / STATE_LAST
    tensors, meta = load_state(path)
    assert meta.pop("agent") == "reinforce"
    header = ("format", "format_version", "toolkit_version")  # save_state writes these itself
    save_state(path, tensors, {k: v for k, v in meta.items() if k not in header})
    fresh = ReinforceAgent(env, Unconditioned(2, 6), _config(steps=2, lr=0.5))
    fresh.load_state(path)
    assert fresh.step == 2 and fresh.oracle_pairs == trained.oracle_pairs
    assert torch.equal(fresh.policy.slot_logits, trained.policy.slot_logits)
    assert fresh.prompt_rewards == trained.prompt_rewards and fresh.prompt_rewards


# ---- the registry ---------------------------------------------------------------------------------------


def test_the_registry_has_one_agent_class_per_agent_name():
    assert list(AGENTS) == ["reinforce", "random", "fixed", "soft-prompt", "pez", "gumbel"]  # --agent's values
    for name, cls in AGENTS.items():
        assert issubclass(cls, Agent) and cls.name == name
        assert cls.from_config.__func__ is not Agent.from_config.__func__, name  # each knows how to build itself


@pytest.mark.parametrize("name", list(AGENTS))
def test_make_agent_builds_the_registered_class(name, tiny_engine):
    config = RunConfig.from_flat({"agent": name, "prompt_length": 2, "policy_width": 8,
                                  "policy": "refiner" if name == "gumbel" else "unconditioned"})
    env = training.build_env(config, tiny_engine, generate_problems(10, seed=0, kinds=["arithmetic"]))
    agent, _ = training.make_agent(config, env, engine=tiny_engine)
    assert type(agent) is AGENTS[name]

