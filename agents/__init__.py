"""Learning agents: one file each, readable top to bottom (`import rlprompt_math.agents`)."""

from rlprompt_math.config import AGENTS, BASELINES, ReinforceConfig

from .fixed import FixedPromptAgent
from .gumbel import GumbelAgent
from .pez import PezAgent
from .random_search import RandomSearchAgent
from .reinforce import ReinforceAgent
from .soft_prompt import SoftPromptAgent

__all__ = ["AGENTS", "BASELINES", "FixedPromptAgent", "GumbelAgent", "PezAgent", "RandomSearchAgent",
           "ReinforceAgent", "ReinforceConfig", "SoftPromptAgent"]
