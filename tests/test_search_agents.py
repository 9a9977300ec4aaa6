"""Successive halving (`--agent halving`) and TPE (`--agent tpe`): their schedules, and that they search (on a bandit
whose best prompt is known). Their budgets against REINFORCE's: tests/test_budget.py; identical seeds and resume:
tests/test_agent_loop.py."""

import numpy as np
import pytest
import torch
from conftest import BanditEnv

from rlprompt_math.agents import HalvingAgent, RandomSearchAgent, TpeAgent
from rlprompt_math.agents.halving import halving_schedule
from rlprompt_math.config import AlgorithmConfig


def _config(**settings):
    return AlgorithmConfig(**{"batch_size": 4, "prompts_per_question": 4, "eval_every": 0, **settings})


# ---- successive halving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 7, 24, 64, 255, 1920, 4480, 5001])
@pytest.mark.parametrize("questions, keep", [(8, 4), (8, 1), (3, 2), (35, 6)])
def test_the_schedule_spends_the_budget_halving_candidates_and_doubling_questions(total, questions, keep):
    rungs = halving_schedule(total, questions, keep)
    spent = sum(n * q for n, q in rungs)
    survivors = rungs[-1][0]
    assert 0 <= total - spent < survivors  # the agent gives the rest (fewer than its survivors) one question each
    for (n, q), (n_next, q_next) in zip(rungs, rungs[1:]):
        assert n_next == max(keep, n // 2) and q_next >= 2 * q  # the better half, on twice as many questions
    assert all(q_next == 2 * q for (_, q), (_, q_next) in zip(rungs[:-1], rungs[1:-1]))  # the last takes the rest
    if total >= keep * questions:
        assert survivors >= keep and (len(rungs) == 1 or rungs[0][1] == questions)
    if len(rungs) > 1:  # the most rungs: one more would not leave `keep` candidates on the budget
        assert rungs[0][0] >= keep << (len(rungs) - 1)


def test_the_default_budget_is_four_rungs_down_to_the_finalists():
    assert halving_schedule(30 * 8 * 8, 8, 4) == [(62, 8), (31, 16), (15, 32), (7, 64)]


def test_halving_promotes_the_better_half_and_ends_on_the_best_prompt():
    """A bandit whose reward is the share of the 2 slots on the target: rung after rung the survivors are the
    best-rewarded half of the rung before, every survivor meets the same questions, and the kept prompt is the
    first candidates' best."""
    env = BanditEnv(vocab_size=8, target=(3, 5), questions=64)
    config = _config(steps=16, finalists=1)  # 256 pairs: 16 x 4, 8 x 8, 4 x 16, 2 x 32 (one more rung: 320)
    agent = HalvingAgent(env, config, val_problems=env.problems[:4])
    assert agent.rungs == [(16, 4), (8, 8), (4, 16), (2, 32)]
    halving, seen = agent.halving, []
    for _ in range(config.steps):
        agent.update()
        agent.step += 1
        seen.append((halving.rung, list(halving.survivors)))
    for rung in range(1, len(agent.rungs)):
        before = next(s for r, s in seen if r == rung - 1)
        after = next(s for r, s in seen if r == rung)
        means = {s: np.mean(halving.rewards[s][: sum(q for _, q in agent.rungs[:rung])]) for s in before}
        assert set(after) == set(sorted(before, key=means.get, reverse=True)[: len(after)])
    # survivors carry every question they met, the same ones: 4 + 8 + 16 + 32
    assert [len(halving.rewards[s]) for s in halving.survivors] == [60, 60]
    assert agent.oracle_pairs == config.steps * config.batch_size * config.prompts_per_question
    first = set(seen[0][1])
    agent.finish()
    assert np.mean(halving.rewards[tuple(agent.policy.actions)]) == max(np.mean(halving.rewards[s]) for s in first)


def test_halving_finds_a_better_prompt_than_random_search_on_a_noisy_bandit():
    """The point of halving: on a noisy oracle, random search's best of many prompts on 4 questions each is a lucky
    draw; halving measures its leaders on more questions. Mean true reward (share of slots on target) of the kept
    prompt over 30 seeds, no finalists (each search's own choice). (With little noise random search's wider net
    wins instead: 0.70 against 0.55 at noise 0.5, 16 steps over 12 values.)"""
    def true_reward(agent):
        return float((np.array(agent.policy.actions) == [3, 5]).mean())

    kept = {HalvingAgent: [], RandomSearchAgent: []}
    for seed in range(30):
        for cls in kept:
            env = BanditEnv(vocab_size=12, target=(3, 5), noise=2.0, seed=seed, questions=400)
            agent = cls(env, _config(steps=32, finalists=0, seed=seed))
            agent.train(progress=False)
            kept[cls].append(true_reward(agent))
    assert np.mean(kept[HalvingAgent]) > np.mean(kept[RandomSearchAgent]) + 0.2, kept  # 0.50 against 0.18


# ---- TPE ------------------------------------------------------------------------------------------------


def test_tpe_runs_miprov2s_schedule_through_optuna():
    """One trial per step on the step's minibatch, told to an Optuna study; a full evaluation of the best-averaged
    candidate not yet fully evaluated every `eval_every` steps and at the last (the empty prompt first, never
    kept), each candidate fully evaluated once; `--finalists` more at the end."""
    env = BanditEnv(vocab_size=8, target=(3, 5), questions=64, per_question=0.001)
    val = env.problems[:5]
    agent = TpeAgent(env, _config(steps=12, batch_size=6, prompts_per_question=1, eval_every=5, finalists=2),
                     val_problems=val)
    summary = agent.train(progress=False)
    assert len(agent.study.trials) == len(agent.trials) == 12
    assert [t.value for t in agent.study.trials] == [v for _, v in agent.trials]
    assert summary["full_evaluations"] == len(agent.full_evals) == 3 + 2  # steps 5, 10, 12, then 2 finalists
    assert summary["oracle_pairs"] == 12 * 6 + (1 + 3 + 2) * 5  # trials, untrained + 3 + 2 full evaluations
    assert agent.untrained_val is not None  # the empty prompt, validated first
    assert all(candidate in agent.prompt_rewards for candidate in agent.full_evals)  # only trials can be kept
    kept = max(agent.full_evals, key=agent.full_evals.get)
    assert tuple(agent.prompt_policy().actions) == kept and summary["best_val_accuracy"] == agent.full_evals[kept]


def test_tpe_proposes_the_good_values_more_often_once_it_has_trials():
    """TPE's point against random sampling: after its random start-up trials it proposes the rewarded slot values
    more often than chance (1 in 8 per slot here; 35% of them in the last 30 of 60 trials)."""
    env = BanditEnv(vocab_size=8, target=(3, 5), questions=64)
    agent = TpeAgent(env, _config(steps=60, batch_size=2, prompts_per_question=1))
    agent.train(progress=False)
    late = np.array([row for row, _ in agent.trials[30:]])
    assert (late == [3, 5]).mean() > 0.25


# ---- REINFORCE's last steps by successive halving (--halving-steps) -------------------------------------


def test_reinforce_halving_steps_measure_the_greedy_and_best_samples_and_hand_over_the_survivors():
    """The last --halving-steps update nothing: they send the same pairs a step to successive halving over the greedy
    prompt and the best-rewarded samples (fresh rewards only), and the finalists are its survivors."""
    from rlprompt_math.agents import ReinforceAgent
    from rlprompt_math.policies import Unconditioned

    env = BanditEnv(vocab_size=12, target=(3, 5), noise=0.5, seed=1, questions=200)
    config = _config(steps=10, halving_steps=4, finalists=2, lr=0.3, seed=1)
    agent = ReinforceAgent(env, Unconditioned(2, 12), config, val_problems=env.problems[:6])
    logits = []
    summary = agent.train(progress=False,
                          callbacks=[lambda a, m: logits.append(a.policy.slot_logits.detach().clone())])
    assert all(torch.equal(logits[5], later) for later in logits[6:])  # steps 7-10 moved nothing
    assert not torch.equal(logits[0], logits[5])  # the steps before did
    assert agent.oracle_pairs == 10 * 4 * 4 + (1 + 2) * 6  # the same pairs a step; the greedy and 2 finalists
    halving = agent.halving
    first = next(iter(halving.rewards))
    assert first == tuple(agent.policy.greedy(torch.zeros(1, 1))[0].tolist())  # the greedy prompt starts the rung
    assert halving.rungs == [(8, 4), (4, 8)] and len(halving.rewards) == 8  # 64 pairs: 8 x 4, then 4 x 8
    sampled = [a for a, _ in sorted(agent.prompt_rewards.items(), key=lambda kv: -np.mean(kv[1]))]
    assert set(halving.rewards) - {first} <= set(sampled)  # the others are REINFORCE's own samples
    survivors = [a for a, _ in halving.ranked()]
    scored = [tuple(f["actions"]) for f in summary["finalists"]["finalists"]]
    assert scored == survivors[:2] and all(len(halving.rewards[s]) == 4 + 8 for s in survivors)
