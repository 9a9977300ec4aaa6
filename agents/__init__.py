"""Learning agents: the loop they share (base.py) and one file per agent, readable top to bottom
(`import rlprompt_math.agents`).

`AGENTS` maps every --agent name to its class (the name is spelled once, on the class);
`AGENTS[name].from_config(config, env, engine=...)` builds one. `check_config(config)` checks a run's settings,
its agent's own rules included; `oracle_pairs_planned(config)` is what a run at them spends (the equal-budget
rule every bench plans with).
"""

from __future__ import annotations

import copy

from rlprompt_math.config import BASELINES, AlgorithmConfig, ConfigError, RunConfig

from .base import Agent, Callback, NonFiniteError, check_finite
from .cluster_search import ClusterSearchAgent
from .fixed import FixedPromptAgent
from .gumbel import GumbelAgent
from .knn import KnnAgent
from .pez import PezAgent
from .random_search import RandomSearchAgent
from .reinforce import ReinforceAgent
from .soft_prompt import SoftPromptAgent

AGENTS: dict[str, type[Agent]] = {agent.name: agent for agent in (
    ReinforceAgent, RandomSearchAgent, FixedPromptAgent, SoftPromptAgent, PezAgent, GumbelAgent, KnnAgent,
    ClusterSearchAgent)}


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
    return config


def oracle_pairs_planned(config: RunConfig) -> int:
    """The oracle pairs a fresh run at `config` spends: the exemplar pool's completions, training and validation
    (`Agent.oracle_pairs_planned`). Benches give learners an equal budget through it (random search's finalists:
    `RandomSearchAgent.finalists_for`); tests/test_budget.py counts what runs send to the oracle against it."""
    config = check_config(copy.deepcopy(config))
    return AGENTS[config.agent].oracle_pairs_planned(config)


__all__ = ["AGENTS", "BASELINES", "Agent", "AlgorithmConfig", "Callback", "ClusterSearchAgent", "FixedPromptAgent",
           "GumbelAgent", "KnnAgent", "NonFiniteError", "PezAgent", "RandomSearchAgent", "ReinforceAgent",
           "SoftPromptAgent", "check_config", "check_finite", "oracle_pairs_planned"]
