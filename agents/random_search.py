"""Random search over prompts, on the same oracle budget as REINFORCE.

Each step draws K uniformly random prompts from the action vocabulary and scores each on the
step's `batch_size` questions: K x batch_size oracle pairs, exactly what REINFORCE spends per step.
The prompt with the best mean reward so far (ties: the one scored on more questions) wins; the
`config.finalists` candidates (0: off) are then compared on the validation questions and the best
becomes a fixed policy, as REINFORCE's finalists are.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from rlprompt_math.checkpoint import save_policy
from rlprompt_math.policies import FixedPrompt

from .finalists import validate_finalists


class RandomSearchAgent:
    name = "random"

    def __init__(self, env, config, *, run=None, val_problems=None, llm=None):
        self.env, self.config, self.run = env, config, run
        self.val_problems = list(val_problems or [])
        self.llm = llm if llm is not None else env.llm
        self.rng = np.random.default_rng(config.seed)
        self.oracle_pairs = 0
        self.scores: dict[tuple, list[float]] = {}
        self.policy: FixedPrompt | None = None

    def train(self, progress: bool = True) -> dict:
        cfg, env = self.config, self.env
        start = time.perf_counter()
        length, vocab_size = env.prompt_length, len(env.vocab)
        for step in tqdm(range(cfg.steps), desc="random", disable=not progress, unit="step"):
            index = self.rng.choice(len(env.problems), size=min(cfg.batch_size, len(env.problems)), replace=False)
            problems = [env.problems[i] for i in index]
            candidates = self.rng.integers(0, vocab_size, size=(cfg.prompts_per_question, length))
            actions = np.repeat(candidates, len(problems), axis=0)
            pairs = [p for _ in range(len(candidates)) for p in problems]
            rewards, infos = env.score(pairs, actions, batch_label=f"step {step}")
            self.oracle_pairs += len(pairs)
            per_candidate = rewards.reshape(len(candidates), len(problems))
            for row, values in zip(candidates, per_candidate):
                self.scores.setdefault(tuple(int(a) for a in row), []).extend(values.tolist())
            correct = np.array([i["correct"] for i in infos], dtype=float)
            metrics = {"step": step, "reward": float(rewards.mean()), "accuracy": float(correct.mean()),
                       "oracle_pairs": self.oracle_pairs, "wall_s": time.perf_counter() - start,
                       "sample_prompt": infos[int(np.argmax(rewards))]["prompt"]}
            if self.run is not None:
                self.run.log_samples(step, infos, rewards)
                self.run.log_metrics(metrics)
        ranked = sorted(self.scores.items(), key=lambda kv: (np.mean(kv[1]), len(kv[1])), reverse=True)
        best, best_val = list(ranked[0][0]), float("nan")
        if self.val_problems and cfg.finalists:
            scored = validate_finalists(env, self.val_problems, self.scores, cfg.finalists)
            self.oracle_pairs += sum(f["pairs"] for f in scored)
            chosen = max(scored, key=lambda f: f["val_accuracy"])  # first of equals: best training reward
            best, best_val = chosen["actions"], chosen["val_accuracy"]
        self.policy = FixedPrompt(env.vocab.decode(best), length, vocab_size, actions=best)
        if self.run is not None:
            for name in ("policy_best.safetensors", "policy_last.safetensors"):
                save_policy(self.run.path / name, self.policy, env.vocab, self.llm, step=cfg.steps)
        return {"steps": cfg.steps, "oracle_pairs": self.oracle_pairs, "best_val_accuracy": best_val,
                "wall_s": time.perf_counter() - start}
