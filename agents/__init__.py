"""Learning agents: the loop they share (base.py) and one file per agent, readable top to bottom
(`import rlprompt_math.agents`).

`AGENTS` maps every --agent name to its class; `AGENTS[name].from_config(config, env, engine=...)` builds one.
"""

from rlprompt_math.config import AGENTS as AGENT_NAMES
from rlprompt_math.config import BASELINES, AlgorithmConfig

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
if tuple(AGENTS) != AGENT_NAMES:
    raise ImportError(f"the agent registry {tuple(AGENTS)} does not match config.AGENTS {AGENT_NAMES}")

__all__ = ["AGENTS", "BASELINES", "Agent", "AlgorithmConfig", "Callback", "ClusterSearchAgent", "FixedPromptAgent",
           "GumbelAgent", "KnnAgent", "NonFiniteError", "PezAgent", "RandomSearchAgent", "ReinforceAgent", "SoftPromptAgent",
           "check_finite"]
