"""How much is there to learn? The prompt landscape and the format ceiling of a task.

    python bench/headroom.py                                   # the default task (arithmetic, difficulty 1-2)
    python bench/headroom.py --difficulty 1 --out headroom.json

Before asking a learner to find a better prompt, measure how much better a prompt can be:

1. **Landscape.** The hand-written prompts and `--prompts` random prompts from the action vocabulary
   (what an untrained policy samples) are each scored on the same `--questions` training questions,
   greedy. From the prompt x question table of 0/1 answers (and of the reward, a run's default `--reward`):
   * the spread of prompt accuracies, split into noise and signal: the variance of a prompt's mean
     that question sampling alone gives (from the prompt x question residuals) is subtracted from the
     observed variance; what is left is the *true* between-prompt standard deviation;
   * split-half reliability: the correlation of prompt means on even vs odd questions;
   * how many questions any prompt changes (solved by some prompts and missed by others);
   * whether a policy whose slots act independently could learn it: ridge regressions of a prompt's
     mean on its tokens (bag of words, and token per slot), correlation of 10-fold predictions.
2. **Format ceiling.** For two-operand arithmetic questions (`What is A+B?`), the accuracy when the
   assistant's answer is forced to start as `A + B = ` (the format in which the model does its best
   arithmetic), against the hand-written prompts on the same validation questions: what any prompt
   that only fixes the format could reach.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time

import click
import numpy as np

from rlprompt_math.config import field_default

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EQUATION = re.compile(r"What is (\d+)\s*([-+*/])\s*(\d+)\?")


def variance_split(table: np.ndarray) -> dict:
    """Observed between-prompt variance of prompt means, the part question sampling explains, and the rest."""
    n, q = table.shape
    means = table.mean(1)
    residual = table - means[:, None] - table.mean(0)[None, :] + table.mean()
    noise = float((residual ** 2).sum() / ((n - 1) * (q - 1)) / q)
    observed = float(means.var(ddof=1))
    return {"mean": float(means.mean()), "observed_sd": observed ** 0.5, "noise_sd": noise ** 0.5,
            "true_sd": max(observed - noise, 0.0) ** 0.5, "min": float(means.min()), "max": float(means.max()),
            "split_half_r": float(np.corrcoef(table[:, ::2].mean(1), table[:, 1::2].mean(1))[0, 1])}


def additive_fit(actions: np.ndarray, y: np.ndarray, vocab_size: int, *, per_slot: bool, seed: int = 0,
                 lams=(1.0, 3.0, 10.0, 30.0)) -> dict:
    """10-fold predictions of y from token indicators (ridge); the correlation for each penalty."""
    n, slots = actions.shape
    features = np.zeros((n, vocab_size * (slots if per_slot else 1)))
    for i, row in enumerate(actions):
        for s, a in enumerate(row):
            features[i, (s * vocab_size if per_slot else 0) + a] += 1
    folds = np.array_split(np.random.default_rng(seed).permutation(n), 10)
    out = {}
    for lam in lams:
        pred = np.zeros(n)
        for fold in folds:
            train = np.setdiff1d(np.arange(n), fold)
            x, mu = features[train], y[train].mean()
            w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (y[train] - mu))
            pred[fold] = features[fold] @ w + mu
        out[str(lam)] = float(np.corrcoef(pred, y)[0, 1])
    return out


@click.command()
@click.option("--prompts", "n_prompts", default=150, show_default=True, help="Random prompts in the landscape.")
@click.option("--questions", default=16, show_default=True, help="Training questions every landscape prompt answers.")
@click.option("--ceiling-questions", default=96, show_default=True, help="Validation questions for the format ceiling.")
@click.option("--prompt-length", default=field_default("prompt_length"), show_default=True)
@click.option("--kinds", default=field_default("kinds"), show_default=True,
              help="Generator problem kinds (as a run's --kinds).")
@click.option("--difficulty", default=field_default("difficulty"), show_default=True,
              help="Generator difficulty levels.")
@click.option("--num-problems", default=field_default("num_problems"), show_default=True,
              help="Problems generated (as a run's --num-problems).")
@click.option("--max-new-tokens", default=field_default("max_new_tokens"), show_default=True)
@click.option("--seed", default=0, show_default=True, help="Split seed (as a run's --seed) and prompt sampling.")
@click.option("--out", default=None, help="Write the tables and the summary as JSON here.")
def main(n_prompts, questions, ceiling_questions, prompt_length, kinds, difficulty, num_problems, max_new_tokens, seed, out):
    import torch
    from tqdm.auto import tqdm

    from rlprompt_math.config import REFERENCE_PROMPTS, DataConfig, OracleConfig
    from rlprompt_math.data import problems_from_config
    from rlprompt_math.grading import answer_is_complete, grade
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.oracle import Decoding, score_pairs
    from rlprompt_math.rewards import RewardMix
    from rlprompt_math.vocab import ActionVocab

    torch.manual_seed(seed)
    _, splits, _ = problems_from_config(DataConfig(kinds=kinds, difficulty=difficulty, num_problems=num_problems), seed)
    rng = np.random.default_rng(seed + 123)
    train = [splits["train"][i] for i in rng.choice(len(splits["train"]), questions, replace=False)]
    engine = TransformersEngine.load()
    vocab = ActionVocab.from_spec(engine.tokenizer, field_default("action_vocab"), empty=field_default("empty_action"))
    mix = RewardMix(list(OracleConfig().rewards), engine=engine)  # a run's reward
    actions = rng.integers(0, len(vocab), size=(n_prompts, prompt_length))
    prompts = list(REFERENCE_PROMPTS) + [vocab.decode(a.tolist()) for a in actions]
    decoding = Decoding(max_new_tokens)

    start = time.perf_counter()
    correct, reward = [], []
    for at in tqdm(range(0, len(prompts), 4), desc="landscape", unit="4 prompts"):
        chunk = prompts[at:at + 4]
        r, infos = score_pairs(engine, mix, [q for _ in chunk for q in train], [p for p in chunk for _ in train],
                               decoding, batch_label="headroom")
        correct += np.array([i["correct"] for i in infos], float).reshape(len(chunk), -1).tolist()
        reward += r.reshape(len(chunk), -1).tolist()
    t_landscape = time.perf_counter() - start
    correct, reward = np.array(correct), np.array(reward)
    hand = len(REFERENCE_PROMPTS)
    random_correct, random_reward = correct[hand:], reward[hand:]
    changed = (random_correct.max(0) > 0) & (random_correct.min(0) < 1)
    landscape = {
        "questions": questions, "random_prompts": n_prompts,
        "hand_written": {p: {"accuracy": float(c.mean()), "reward": float(r.mean())}
                         for p, c, r in zip(REFERENCE_PROMPTS, correct[:hand], reward[:hand])},
        "random_accuracy": variance_split(random_correct),
        "random_reward": variance_split(random_reward),
        "question_solve_rate": [round(float(v), 3) for v in random_correct.mean(0)],
        "questions_any_prompt_changes": int(changed.sum()),
        "additive_cv_r": {f"{kind} {name}": additive_fit(actions, y.mean(1), len(vocab), per_slot=kind == "per-slot")
                          for kind in ("bag-of-words", "per-slot")
                          for name, y in (("accuracy", random_correct), ("reward", random_reward))},
        "seconds": t_landscape}

    val = [p for p in splits["validation"] if EQUATION.fullmatch(p.question.strip())][:ceiling_questions]
    ceiling = {"questions": len(val)}  # none when the task has no `What is A op B?` questions
    for prompt in REFERENCE_PROMPTS if val else ():
        for forced in (False, True):
            texts, heads = [], []
            for p in val:
                a, op, b = EQUATION.fullmatch(p.question.strip()).groups()
                head = f"{a} {op} {b} = " if forced else ""
                texts.append(engine.render(prompt, p.question) + head)
                heads.append(head)
            outs = engine.generate(texts, max_new_tokens=max_new_tokens, stop_when=answer_is_complete)
            acc = float(np.mean([grade(h + o, p.answer).correct for h, o, p in zip(heads, outs, val)]))
            ceiling[f"{prompt!r}{' + forced `A op B = `' if forced else ''}"] = acc

    summary = {"model": engine.name, "kinds": kinds, "difficulty": difficulty, "seed": seed,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "landscape": landscape, "format_ceiling": ceiling}
    print(json.dumps(summary, indent=2))
    if out:
        with open(out, "w") as handle:
            json.dump({"summary": summary, "prompts": prompts, "correct": correct.tolist(),
                       "reward": reward.tolist(), "actions": actions.tolist()}, handle)


if __name__ == "__main__":
    main()
