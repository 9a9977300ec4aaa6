"""A hand-written prompt, through the same pipeline: nothing is learned; it is saved as a policy so
that evaluation and comparison treat it exactly like a trained one."""

from __future__ import annotations

import time

import numpy as np

from rlprompt_math.checkpoint import save_policy
from rlprompt_math.policies import FixedPrompt


class FixedPromptAgent:
    name = "fixed"

    def __init__(self, env, text: str, *, run=None, val_problems=None, llm=None):
        self.env, self.run = env, run
        self.val_problems = list(val_problems or [])
        self.llm = llm if llm is not None else env.llm
        self.policy = FixedPrompt(text, env.prompt_length, len(env.vocab))

    def train(self, progress: bool = True) -> dict:
        start = time.perf_counter()
        val = float("nan")
        if self.val_problems:
            prompts = self.policy.prompts(np.zeros((len(self.val_problems), 1)))
            _, infos = self.env.score(self.val_problems, None, prompts=prompts, batch_label="validation")
            val = float(np.mean([i["correct"] for i in infos]))
        if self.run is not None:
            for name in ("policy_best.safetensors", "policy_last.safetensors"):
                save_policy(self.run.path / name, self.policy, self.env.vocab, self.llm, step=0)
        return {"steps": 0, "oracle_pairs": len(self.val_problems), "best_val_accuracy": val,
                "wall_s": time.perf_counter() - start}
