"""Gymnasium environments for prompt refinement.

`import envs` registers:
  rlprompt_math/PromptRefine-v0     one step: the whole prompt is one MultiDiscrete action
  rlprompt_math/PromptRefineSeq-v0  one token per step, reward at the end

    gymnasium.make("rlprompt_math/PromptRefine-v0", llm=FrozenLLM.load(), dataset="gsm8k.jsonl")

`llm` may be a loaded FrozenLLM (shared, never copied) or a model name/path to load.
"""

import gymnasium

from .prompt_refine import PromptRefineEnv, PromptRefineSeqEnv

__all__ = ["PromptRefineEnv", "PromptRefineSeqEnv"]

for _id, _entry in (("rlprompt_math/PromptRefine-v0", "envs.prompt_refine:PromptRefineEnv"),
                    ("rlprompt_math/PromptRefineSeq-v0", "envs.prompt_refine:PromptRefineSeqEnv")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry, disable_env_checker=True)
