"""Gymnasium environments for prompt refinement.

`import rlprompt_math.envs` registers:
  rlprompt_math/PromptRefine-v0     one step: the whole prompt is one MultiDiscrete action
  rlprompt_math/PromptRefineSeq-v0  one token per step, reward at the end

    gymnasium.make("rlprompt_math/PromptRefine-v0", engine=TransformersEngine.load(), dataset="gsm8k.jsonl")

The registered entry points are the factories `make_env` / `make_seq_env`: `engine` may be a loaded
TransformersEngine (shared, never copied) or a model name/path to load. Both, and a training run
(`train.build_env`), build the environment through the one constructor `assemble_env(engine, problems, ...)`;
`make_env(..., shots=2, seed=S)` draws the exemplar pool from the training split as a run with --seed S does.
`PromptRefineEnv(engine, problems, vocab, reward_mix, decoding, space=...)` is the class over loaded objects.
"""

import gymnasium

from .prompt_refine import PromptRefineEnv, PromptRefineSeqEnv, assemble_env, make_env, make_seq_env

__all__ = ["PromptRefineEnv", "PromptRefineSeqEnv", "assemble_env", "make_env", "make_seq_env"]

for _id, _entry in (("rlprompt_math/PromptRefine-v0", "rlprompt_math.envs.prompt_refine:make_env"),
                    ("rlprompt_math/PromptRefineSeq-v0", "rlprompt_math.envs.prompt_refine:make_seq_env")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry, disable_env_checker=True)
