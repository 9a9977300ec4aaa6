"""Which learning signal ranks prompts by what we care about: held-out greedy accuracy?

    python bench/learning_signal.py                          # 40 prompts x 64 training questions
    python bench/learning_signal.py --prompts 60 --questions 96 --prompt-length 8

Scores a set of prompts (no prompt, the hand-written ones, and random prompts from the action
vocabulary, the kind a policy samples early in training) on the same training questions, and
computes for every (prompt, question) pair:

  correct      0/1 of the greedy answer (the reward today)
  partial      partial credit of the greedy answer
  bare         log p(gold | rendered prompt): the gold number forced right after the assistant
               header (the `likelihood` reward; the seed's own signal)
  at_answer    log p(gold | rendered prompt + the greedy completion up to where it states its final
               number): the gold forced in the model's own format ("36 + 32 = " -> "68")
  p_at_answer  exp(at_answer)
  margin       at_answer minus log p(the model's own number | the same prefix)
  answer_likelihood
               the reward of that name, as training computes it: p_at_answer read from the greedy
               decode's own logits, the gold scored up to the first token where the model departs

Then, over many random halvings of the questions, the Spearman correlation between each signal's
per-prompt mean on one half and the prompts' greedy accuracy on the *other* half. That is what a
learner needs: a signal measured on the questions of a step that predicts accuracy on questions it
has not seen. `correct` on one half against accuracy on the other is the reference. Also: each
signal's AUC for telling correct pairs from wrong ones, and the oracle seconds per pair.
"""

from __future__ import annotations

import json
import os
import platform
import time

import click
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _ranks(x) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho needs)."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(a, b) -> float:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _auc(score, label) -> float:
    score, label = np.asarray(score, float), np.asarray(label, bool)
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@click.command()
@click.option("--prompts", "n_prompts", default=40, show_default=True, help="Prompts in all (hand-written first).")
@click.option("--questions", default=64, show_default=True, help="Training questions each prompt is scored on.")
@click.option("--prompt-length", default=8, show_default=True, help="Slots of the random prompts.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--halvings", default=500, show_default=True, help="Random question halvings averaged over.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default).")
@click.option("--out", default=None, help="Write the per-pair table and the summary as JSON here.")
def main(n_prompts, questions, prompt_length, max_new_tokens, halvings, seed, threads, out):
    import torch
    from tqdm.auto import tqdm

    from rlprompt_math.data import generate_problems, split_problems
    from rlprompt_math.llm import FrozenLLM
    from rlprompt_math.oracle import Decoding, score_pairs
    from rlprompt_math.grading import answer_position
    from rlprompt_math.rewards import RewardMix
    from rlprompt_math.vocab import ActionVocab

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    llm = FrozenLLM.load()
    problems = split_problems(generate_problems(2000, seed=seed, kinds=["arithmetic"], difficulty=[1, 2]),
                              seed)["train"][:questions]
    vocab = ActionVocab.from_spec(llm.tokenizer, "words", empty=True)
    hand = ["", "Let's think step by step.", "Answer with only the final number.",
            "Give the answer as a single number."]
    rng = np.random.default_rng(seed)
    prompts = hand + [vocab.decode(rng.integers(0, len(vocab), prompt_length).tolist())
                      for _ in range(n_prompts - len(hand))]
    decoding = Decoding(max_new_tokens)
    mix = RewardMix(["correct", "answer_likelihood"], llm=llm)
    pairs_q = [q for _ in prompts for q in problems]
    pairs_p = [p for p in prompts for _ in problems]

    start = time.perf_counter()
    infos = []
    chunk = 4 * len(problems)  # four prompts a call, so the bar moves
    for at in tqdm(range(0, len(pairs_p), chunk), desc="greedy answers", unit="call"):
        infos += score_pairs(llm, mix, pairs_q[at:at + chunk], pairs_p[at:at + chunk], decoding,
                             batch_label="signal")[1]
    t_generate = time.perf_counter() - start
    rendered = [llm.render(p, q.question) for p, q in zip(pairs_p, pairs_q)]
    gold = [q.answer for q in pairs_q]

    start = time.perf_counter()
    bare = llm.answer_logprobs(rendered, gold)
    t_bare = time.perf_counter() - start

    positions = [answer_position(i["completion"]) for i in infos]
    prefixes = [r + i["completion"][:pos] for r, i, pos in zip(rendered, infos, positions)]
    own = [i["completion"][pos:] for i, pos in zip(infos, positions)]
    own = [_leading_number(o) or "" for o in own]
    start = time.perf_counter()
    at_answer = llm.answer_logprobs(prefixes, gold)
    t_at = time.perf_counter() - start
    own_lp = llm.answer_logprobs(prefixes, own)
    margin = [a - o if o_text else a for a, o, o_text in zip(at_answer, own_lp, own)]

    shape = (len(prompts), len(problems))
    signals = {"correct": np.array([i["correct"] for i in infos], float).reshape(shape),
               "partial": np.array([i["credit"] for i in infos], float).reshape(shape),
               "bare": np.array(bare).reshape(shape),
               "at_answer": np.array(at_answer).reshape(shape),
               "p_at_answer": np.exp(np.array(at_answer)).reshape(shape),
               "answer_likelihood": np.array([i["rewards"]["answer_likelihood"] for i in infos]).reshape(shape),
               "margin": np.array(margin).reshape(shape)}
    correct = signals["correct"]
    halves = np.random.default_rng(seed + 1)
    rho = {name: [] for name in signals}
    for _ in range(halvings):
        order = halves.permutation(len(problems))
        a, b = order[: len(order) // 2], order[len(order) // 2:]
        truth = correct[:, b].mean(1)
        for name, values in signals.items():
            rho[name].append(_spearman(values[:, a].mean(1), truth))
    summary = {
        "model": llm.name, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "prompts": len(prompts), "questions": len(problems), "pairs": len(pairs_p),
        "accuracy_range": [float(correct.mean(1).min()), float(correct.mean(1).max())],
        "seconds_per_pair": {"generate": t_generate / len(pairs_p), "bare": t_bare / len(pairs_p),
                             "at_answer": t_at / len(pairs_p)},
        "no_answer_position": float(np.mean([p == len(i["completion"].rstrip()) for p, i in zip(positions, infos)])),
        "signals": {name: {"spearman_vs_other_half_accuracy": float(np.nanmean(r)),
                           "spearman_sd": float(np.nanstd(r)),
                           "pair_auc_correct": _auc(signals[name].ravel(), correct.ravel().astype(bool))}
                    for name, r in rho.items()}}
    print(json.dumps(summary, indent=2))
    if out:
        with open(out, "w") as handle:
            json.dump({"summary": summary, "prompts": prompts,
                       "pairs": [{"prompt": p, "question": q.question, "gold": q.answer, "completion": i["completion"],
                                  "correct": i["correct"], "bare": b, "at_answer": a, "margin": m}
                                 for p, q, i, b, a, m in zip(pairs_p, pairs_q, infos, bare, at_answer, margin)]},
                      handle, indent=1)


def _leading_number(text: str) -> str | None:
    import re

    match = re.match(r"\s*-?\d[\d,]*(?:\.\d+)?", text)
    return match.group(0).strip() if match else None


if __name__ == "__main__":
    main()
