"""Learning agents: the loop they share (base.py) and one file per agent, readable top to bottom
(`import rlprompt_math.agents`).

`AGENTS` maps every --agent name to its class (the name is spelled once, on the class);
`AGENTS[name].from_config(config, env, engine=...)` builds one. `check_config(config)` checks a run's settings,
its agent's own rules included, and its plan under --max-oracle-pairs; `oracle_pairs_planned(config)` is what a
run at them spends (the equal-budget rule every bench plans with), `describe_plan(config)` the same in words.
"""

from __future__ import annotations

import copy

from rlprompt_math.config import BASELINES, AlgorithmConfig, ConfigError, RunConfig

from .base import Agent, Callback, NonFiniteError, check_finite
from .cluster_search import ClusterSearchAgent
from .fixed import FixedPromptAgent
from .gumbel import GumbelAgent
from .halving import HalvingAgent
from .knn import KnnAgent
from .pez import PezAgent
from .random_search import RandomSearchAgent
from .reinforce import ReinforceAgent
from .soft_prompt import SoftPromptAgent
from .tpe import TpeAgent

AGENTS: dict[str, type[Agent]] = {agent.name: agent for agent in (
    ReinforceAgent, RandomSearchAgent, FixedPromptAgent, SoftPromptAgent, PezAgent, GumbelAgent, KnnAgent,
    ClusterSearchAgent, HalvingAgent, TpeAgent)}


def check_config(config: RunConfig) -> RunConfig:
    """`config` checked whole, before anything is read, loaded or written: its agent is a registered one, --shots
    is filled in where not given (`Agent.default_shots`), then the agent's own rules (`Agent.check_config`, first: a
    route's own setting out of range gets the route's message) and the settings every agent shares
    (`RunConfig.validate`). A ConfigError names the flag."""
    if config.agent not in AGENTS:
        raise ConfigError(f"--agent must be one of {', '.join(AGENTS)} (got {config.agent!r})")
    agent = AGENTS[config.agent]
    if config.policy.shots is None:
        config.policy.shots = agent.default_shots(config)
    agent.check_config(config)
    config.validate()
    cap = config.algorithm.max_oracle_pairs
    if cap:  # the plan depends on the settings alone: refuse it now, not when the budget runs out mid-run
        try:
            planned = agent.oracle_pairs_planned(config)
        except ValueError:  # not known before the run: the loop holds the run to the cap (`Agent.affords`)
            planned = 0
        if planned > cap:
            raise ConfigError(f"--max-oracle-pairs {cap:,}: this run plans {_plan_text(agent, config)} oracle pairs; "
                              "fit it under the cap with fewer --steps, a smaller --batch-size, --prompts-per-question "
                              "or --val-size, fewer validations (a larger --eval-every) or --finalists, or raise "
                              "--max-oracle-pairs")
    return config


def oracle_pairs_planned(config: RunConfig) -> int:
    """The oracle pairs a fresh run at `config` spends: the exemplar pool's completions, training and validation
    (`Agent.oracle_pairs_planned`). Benches give learners an equal budget through it (random search's finalists:
    `RandomSearchAgent.finalists_for`); tests/test_budget.py counts what runs send to the oracle against it."""
    config = check_config(copy.deepcopy(config))
    return AGENTS[config.agent].oracle_pairs_planned(config)


def describe_plan(config: RunConfig) -> str:
    """`oracle_pairs_planned` in words, its parts and the cap: "2,352 (32 pool + 1,920 training + 4 validations x
    100)" (the line every run prints before it starts)."""
    config = check_config(copy.deepcopy(config))
    cap = config.algorithm.max_oracle_pairs
    return _plan_text(AGENTS[config.agent], config) + (f"; at most {cap:,} (--max-oracle-pairs)" if cap else "")


def _plan_text(agent: type[Agent], config: RunConfig) -> str:
    try:
        plan = agent.oracle_pairs_plan(config)
    except ValueError as error:
        return f"not known before the run ({error})"
    pool = f"{plan['pool']:,} pool + " if plan["pool"] else ""
    return (f"{agent.oracle_pairs_planned(config):,} ({pool}{plan['training']:,} training + {plan['validations']} "
            f"validations x {plan['val_size']:,})")


__all__ = ["AGENTS", "BASELINES", "Agent", "AlgorithmConfig", "Callback", "ClusterSearchAgent", "FixedPromptAgent",
           "GumbelAgent", "HalvingAgent", "KnnAgent", "NonFiniteError", "PezAgent", "RandomSearchAgent",
           "ReinforceAgent", "SoftPromptAgent", "TpeAgent", "check_config", "check_finite", "describe_plan", "oracle_pairs_planned"]
