"""Which learning signal ranks prompts by what we care about: held-out greedy accuracy?

    python bench/learning_signal.py                          # 40 prompts x 64 training questions
    python bench/learning_signal.py --prompts 60 --questions 96 --prompt-length 8
    python bench/learning_signal.py --shots 2     # structured prompts: exemplars, answer form, words

Scores a set of prompts (no prompt, the hand-written reference prompts, and random prompts from the
action vocabulary, the kind a policy samples early in training) on the same training questions through
the oracle (`oracle.score_pairs`, greedy), with every built-in reward (`rewards.BUILTINS`) as training
computes it. The signals of a (prompt, question) pair are those rewards' values:

  correct, correct_strict   0/1 of the greedy answer
  partial                   partial credit of the greedy answer
  format                    1 when a final answer could be extracted
  likelihood                p(gold) forced right after the assistant header (per-token geometric mean;
                            the seed's own signal)
  answer_likelihood         p(gold) where the model states its own answer ("36 + 32 = " -> "68"), read
                            from the greedy decode's logits
  log answer_likelihood     its log (which of the two ranks prompts better)

With `--shots K` the random prompts are members of the structured space instead (`PromptSpace.sample`: K
exemplar slots over a pool of training problems, the answer form, the instruction slots; the problems any
prompt shows are kept out of the questions), the few-shot reference is added, and the summary also gives,
per answer form, each signal's mean beside the accuracy: whether a signal prefers the form that answers
correctly more often.

Then, over many random halvings of the questions, the Spearman correlation between each signal's
per-prompt mean on one half and the prompts' greedy accuracy on the *other* half. That is what a
learner needs: a signal measured on the questions of a step that predicts accuracy on questions it
has not seen. `correct` on one half against accuracy on the other is the reference. Also: each
signal's AUC for telling correct pairs from wrong ones, and the oracle seconds per pair (the greedy
answer and every reward).
"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from common import machine  # bench/ is on the path
from rlprompt_math.config import field_default


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
@click.option("--prompt-length", default=field_default("prompt_length"), show_default=True,
              help="Slots of the random prompts.")
@click.option("--max-new-tokens", default=field_default("max_new_tokens"), show_default=True)
@click.option("--halvings", default=500, show_default=True, help="Random question halvings averaged over.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default).")
@click.option("--shots", default=0, show_default=True,
              help="random prompts from the structured space with this many exemplar slots (0: words only)")
@click.option("--out", default=None, help="Write the per-pair table and the summary as JSON here.")
def main(n_prompts, questions, prompt_length, max_new_tokens, halvings, seed, threads, shots, out):
    import torch
    from tqdm.auto import tqdm

    from rlprompt_math.config import REFERENCE_PROMPTS
    from rlprompt_math.data import generate_problems, split_problems
    from rlprompt_math.exemplars import few_shot_reference
    from rlprompt_math.prompt_space import PromptSpace, draw_pool
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.grading import answer_position
    from rlprompt_math.oracle import Decoding, score_pairs
    from rlprompt_math.rewards import BUILTINS, RewardMix
    from rlprompt_math.vocab import ActionVocab

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    engine = TransformersEngine.load()
    splits = split_problems(generate_problems(2000, seed=seed, kinds=["arithmetic"], difficulty=[1, 2]), seed)
    vocab = ActionVocab.from_spec(engine.tokenizer, field_default("action_vocab"), empty=field_default("empty_action"))
    rng = np.random.default_rng(seed)
    decoding = Decoding(max_new_tokens)
    prompts, forms = list(REFERENCE_PROMPTS), [None] * len(REFERENCE_PROMPTS)
    if shots:
        pool, _ = draw_pool(splits, seed=seed, engine=engine, decoding=decoding)
        space = PromptSpace(vocab, prompt_length, pool, shots)
        reference = few_shot_reference(splits["train"], shots)
        shown = {p.question for p in pool.problems} | {e.question for e in reference.exemplars}
        problems = [p for p in splits["train"] if p.question not in shown][:questions]
        prompts.append(reference)
        forms.append("equation")
        for row in space.sample(rng, n_prompts - len(prompts)):
            prompts.append(space.decode(row))
            forms.append(space.form(row) if space.exemplar_indices(row) else None)
    else:
        problems = splits["train"][:questions]
        prompts += [vocab.decode(rng.integers(0, len(vocab), prompt_length).tolist())
                    for _ in range(n_prompts - len(prompts))]
    mix = RewardMix(list(BUILTINS), engine=engine)  # every built-in reward, computed as in training
    pairs_q = [q for _ in prompts for q in problems]
    pairs_p = [p for p in prompts for _ in problems]

    start = time.perf_counter()
    infos = []
    chunk = 4 * len(problems)  # four prompts a call, so the bar moves
    for at in tqdm(range(0, len(pairs_p), chunk), desc="greedy answers", unit="call"):
        infos += score_pairs(engine, mix, pairs_q[at:at + chunk], pairs_p[at:at + chunk], decoding,
                             batch_label="signal")[1]
    t_oracle = time.perf_counter() - start

    shape = (len(prompts), len(problems))
    signals = {name: np.array([i["rewards"][name] for i in infos], float).reshape(shape) for name in mix.names}
    signals["log answer_likelihood"] = np.log(signals["answer_likelihood"])
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
        "model": engine.name, "machine": machine(engine),
        "prompts": len(prompts), "questions": len(problems), "pairs": len(pairs_p),
        "accuracy_range": [float(correct.mean(1).min()), float(correct.mean(1).max())],
        "seconds_per_pair": t_oracle / len(pairs_p),
        "no_answer_position": float(np.mean([answer_position(i["completion"]) == len(i["completion"].rstrip())
                                             for i in infos])),
        "signals": {name: {"spearman_vs_other_half_accuracy": float(np.nanmean(r)),
                           "spearman_sd": float(np.nanstd(r)),
                           "pair_auc_correct": _auc(signals[name].ravel(), correct.ravel().astype(bool))}
                    for name, r in rho.items()}}
    if shots:  # per answer form: each signal's mean beside the accuracy (prompts without exemplars: "none")
        by_form = {}
        for form in dict.fromkeys(f or "none" for f in forms):
            rows = [i for i, f in enumerate(forms) if (f or "none") == form]
            by_form[form] = {"prompts": len(rows), **{name: float(values[rows].mean()) for name, values in signals.items()
                                                       if name != "log answer_likelihood"}}
        summary["by_answer_form"] = by_form
    print(json.dumps(summary, indent=2))
    if out:
        from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null

        with open(out, "w") as handle:
            handle.write(dumps_json({"summary": summary, "prompts": [str(p) for p in prompts], "forms": forms,
                       "pairs": [{"prompt": str(p), "question": q.question, "gold": q.answer, "completion": i["completion"],
                                  "correct": i["correct"], "rewards": i["rewards"]}
                                 for p, q, i in zip(pairs_p, pairs_q, infos)]},
                                    indent=1))


if __name__ == "__main__":
    main()
