"""Learning agents: one file each, readable top to bottom (`import rlprompt_math.agents`)."""

from rlprompt_math.config import AGENTS, BASELINES, ReinforceConfig

from .fixed import FixedPromptAgent
from .random_search import RandomSearchAgent
from .reinforce import ReinforceAgent

__all__ = ["AGENTS", "BASELINES", "FixedPromptAgent", "RandomSearchAgent", "ReinforceAgent", "ReinforceConfig"]
