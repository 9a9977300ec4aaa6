"""Learning agents: one file each, readable top to bottom."""

from .fixed import FixedPromptAgent
from .random_search import RandomSearchAgent
from .reinforce import BASELINES, ReinforceAgent, ReinforceConfig

AGENTS = ("reinforce", "random", "fixed")

__all__ = ["AGENTS", "BASELINES", "FixedPromptAgent", "RandomSearchAgent", "ReinforceAgent", "ReinforceConfig"]
