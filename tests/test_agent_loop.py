"""The loop every agent shares (agents/base.py): callbacks, resume after a crash (every agent and route), state files,
the registry, identical seeds."""

import json


import pytest
import torch
from conftest import EXEMPLAR_RUN, FAST_RUN, OWN_TARGETS, ROUTES, BanditEnv, metrics_rows, route_run, timeless

import rlprompt_math.train as training
from rlprompt_math.agents import AGENTS, Agent, AlgorithmConfig, RandomSearchAgent, ReinforceAgent
from rlprompt_math.checkpoint import (
    POLICY_BEST,
    POLICY_FORMAT,
    PROMPT,
    STATE_LAST,
    SUMMARY,
    load_state,
    read,
    save_state,
)
from rlprompt_math.config import RunConfig
from rlprompt_math.data import generate_problems
from rlprompt_math.policies import Unconditioned
from rlprompt_math.runlog import RunDir



def _bandit():
    """A bandit whose rewards also differ by question (6 arms, 12 questions, no noise: reruns are exact)."""
    return BanditEnv(vocab_size=6, questions=12, per_question=0.01)


def _config(**settings):
    return AlgorithmConfig(**{"batch_size": 3, "prompts_per_question": 2, **settings})


# ---- callbacks ------------------------------------------------------------------------------------------


def test_a_callback_is_called_once_per_step_with_its_metrics():
    seen = []
    agent = ReinforceAgent(_bandit(), Unconditioned(2, 6), _config(steps=5, eval_every=2),
                           val_problems=_bandit().problems[:4])
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
    env = _bandit()
    agent = RandomSearchAgent(env, _config(steps=10, checkpoint_every=5, finalists=2), run=RunDir(tmp_path),
                              val_problems=env.problems[:4])
    summary = agent.train(progress=False, callbacks=[stop, lambda agent, metrics: later.append(metrics["step"])])
    assert stop.calls == 3 and later == [0, 1, 2]  # every callback sees the stopping step
    assert summary["steps"] == agent.step == len(agent.history) == 3
    assert [int(r["step"]) for r in metrics_rows(tmp_path)] == [0, 1, 2]
    assert load_state(tmp_path / STATE_LAST)[1]["step"] == 3  # the stop is checkpointed: --resume continues from it
    # The end still runs: two finalists compared on the 4 validation questions, the best kept.
    assert summary["oracle_pairs"] == 3 * 3 * 2 + 2 * 4
    _, meta = read(tmp_path / POLICY_BEST, POLICY_FORMAT)
    assert meta["policy"]["actions"] == agent.policy.actions and meta["step"] == 3


# ---- resume ---------------------------------------------------------------------------------------------


RESUMES = [  # a run's settings, the step whose update Ctrl-C stops, the step of the checkpoint it resumes from
    pytest.param({**FAST_RUN, "agent": "random", "steps": 5, "checkpoint_every": 2, "finalists": 2}, 3, 2, (),
                 id="random"),
    # Successive halving: the crash falls in a later rung than the checkpoint (its survivors and queue are state).
    pytest.param({**FAST_RUN, "agent": "halving", "steps": 6, "checkpoint_every": 2, "finalists": 2}, 5, 4, (),
                 id="halving"),
    # REINFORCE's last steps by successive halving: the halving's survivors, queue and rewards are state too.
    pytest.param({**FAST_RUN, "agent": "reinforce", "steps": 6, "halving_steps": 3, "finalists": 1,
                  "checkpoint_every": 2, "eval_every": 2}, 5, 4, (), id="reinforce-halving-steps"),
    # TPE: the trials told so far are state (a new study is told them again), and the fully evaluated candidates.
    pytest.param({**FAST_RUN, "agent": "tpe", "steps": 6, "checkpoint_every": 2, "eval_every": 2, "finalists": 1,
                  "prompts_per_question": 2}, 5, 4, (), id="tpe"),
    # A question-conditioned policy, and a learned baseline whose value head is state too.
    pytest.param({**FAST_RUN, "agent": "reinforce", "policy": "refiner", "policy_width": 16, "prompt_length": 2,
                  "shots": 0, "baseline": "learned", "rewards": ["partial"], "steps": 6, "batch_size": 3,
                  "checkpoint_every": 2, "eval_every": 2, "seed": 5}, 4, 4, (), id="reinforce"),
    # The exemplar pool's completions are the model's: a resumed run reads them from the run directory.
    pytest.param(EXEMPLAR_RUN, 1, 1, ("rlprompt_math.exemplars.ExemplarPool.collect_completions",),
                 id="reinforce-exemplars"),
    *(pytest.param(route_run(agent), 3, 2, (), id=agent) for agent in ROUTES),
    # The model's own answers, collected at the first step, are saved state: not asked for again.
    pytest.param(route_run("soft-prompt", **OWN_TARGETS), 3, 2,
                 ("rlprompt_math.agents.differentiable.DifferentiableAgent.collect_own_targets",),
                 id="soft-prompt-own-targets"),
]


@pytest.mark.parametrize("settings, crash_at, resumes_at, forbidden", RESUMES)
def test_a_run_stopped_mid_step_resumes_to_the_same_result(settings, crash_at, resumes_at, forbidden,
                                                           tiny_model_dir, resume_matches_whole_run, request):
    splits = None
    if settings.get("loss_target") == "own":  # questions the tiny model answers, so that it has targets
        problems, _ = request.getfixturevalue("answerable")
        splits = {"train": problems, "validation": problems[:3], "test": problems[:4]}
    resume_matches_whole_run({**settings, "model": str(tiny_model_dir)}, crash_at, resumes_at, splits=splits,
                             forbidden=forbidden)


# ---- state files ----------------------------------------------------------------------------------------


def test_a_state_file_loads_only_into_its_agent(tmp_path):
    env = _bandit()
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
    assert list(AGENTS) == ["reinforce", "random", "fixed", "soft-prompt", "pez", "gumbel", "knn",
                            "cluster", "halving", "tpe"]  # --agent's values
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



# ---- identical seeds ------------------------------------------------------------------------------------


def _kept(agent: str, seed: int, engine, root) -> dict:
    """What a two-step run of `agent` keeps, through the one wiring: its kept policy file's bytes, prompt.json and
    summary.json (times aside). Two kinds of questions: the cluster agent's k-means has two clusters to seed."""
    settings = {**FAST_RUN, "agent": agent, "seed": seed, "kinds": "arithmetic,word_one_step", "steps": 2, "eval_every": 1, "checkpoint_every": 1,
                "finalists": 1, "exemplar_pool": 4, "prompt_length": 2, "policy_width": 8, "no_final_eval": True,
                **ROUTES.get(agent, {}), "output_dir": str(root), "name": f"{agent}-s{seed}-{len(list(root.iterdir()))}"}
    run = training.train(RunConfig.from_flat(settings), engine=engine, log=lambda _: None).run_dir
    prompt = json.loads((run / PROMPT).read_text()) if (run / PROMPT).exists() else None  # a soft prompt has none
    return {"policy": (run / POLICY_BEST).read_bytes(), "prompt": prompt,
            "summary": timeless(json.loads((run / SUMMARY).read_text()))}


@pytest.mark.parametrize("name", list(AGENTS))
def test_identical_seeds_give_identical_kept_prompts(name, tiny_engine, tmp_path):
    first, again = (_kept(name, 0, tiny_engine, tmp_path) for _ in range(2))
    assert first == again
    if name == "cluster":
        assert first["summary"]["clusters"] == 2
    if name in ("random", "halving", "tpe"):  # and the seed is what decides it
        other = _kept(name, 1, tiny_engine, tmp_path)
        assert other["prompt"] != first["prompt"] and other["policy"] != first["policy"]
