"""How much is there to learn? The prompt landscape and the format ceiling of a task.

    python bench/headroom.py                                   # the default task (arithmetic, difficulty 1-2)
    python bench/headroom.py --difficulty 1 --out headroom.json
    python bench/headroom.py --factors --questions 64 --prompts 8 --out factors.json  # each factor: 3,900 pairs

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
3. **Factors** (`--factors`, instead of 1 and 2). The same split for each factor of a structured prompt
   (`prompt_space.PromptSpace`), every prompt scored greedy on the same `--questions` training questions:
   * exemplars: `--prompts` random sets of `--shots` exemplars (each slot a random pool problem, never
     none, no two the same), no instruction words, once in each answer form (bare, equation, spaced,
     completion);
   * answer form: the same sets under each form, so forms are compared paired: each form's mean and the
     differences between forms, with a 95% interval from resampling sets and questions together;
   * number of shots: `--prompts` random sets of each of `--shot-counts` sizes, spaced form (the model's own);
   * words: `--prompts` random instruction prompts (what exists without exemplars, the landscape of 1);
   * the whole space: `--prompts` uniform random actions of the space with `--shots` exemplar slots (slots
     may be none, a random form, instruction words): what an untrained policy samples;
   * for reference, the hand-written prompts and the few-shot prompt a person writes in a minute (the
     first `--shots` training problems, spaced form).
   The pool is drawn as a run with the same `--seed` draws it (`draw_pool`: `--pool` problems from the
   training split only, the model's own completions collected once), so the bench measures what a
   learner can choose; the scored questions are other training problems (no prompt shows the question
   it is scored on). The between-forms and between-shot-counts rows split a table of level means (each
   form's, or each count's, mean over its sets, per question): the true sd a policy's choice of that one
   factor can move.
"""

from __future__ import annotations

import json
import os
import re
import time

import click
import numpy as np

from common import machine  # bench/ is on the path
from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null
from rlprompt_math.config import field_default

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


def paired_difference(a: np.ndarray, b: np.ndarray, *, seed: int = 0, resamples: int = 2000) -> dict:
    """Mean of `a - b` over two prompt x question tables of the same sets and questions, with a 95%
    interval from resampling sets and questions together (both vary between measurements)."""
    d = a - b
    rng = np.random.default_rng(seed)
    boot = [d[np.ix_(rng.integers(0, d.shape[0], d.shape[0]), rng.integers(0, d.shape[1], d.shape[1]))].mean()
            for _ in range(resamples)]
    return {"difference": float(d.mean()), "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}


def factor_landscape(engine, splits: dict, vocab, mix, decoding, *, questions: int, sets: int, prompt_length: int,
                     shots: int, shot_counts: list[int], pool_size: int, seed: int, settings: dict,
                     out: str | None) -> dict:
    """The `--factors` measurement (module docstring, 3): prints the tables, writes `out`, returns the summary."""
    from tqdm.auto import tqdm

    from rlprompt_math.config import ANSWER_FORMS, REFERENCE_PROMPTS
    from rlprompt_math.exemplars import few_shot_reference, reference_name
    from rlprompt_math.oracle import score_pairs
    from rlprompt_math.prompt_space import PromptSpace, draw_pool
    from rlprompt_math.templates import as_prompt

    if shots < 1 or not shot_counts or min(shot_counts) < 1:
        raise click.BadParameter("--shots and every --shot-counts must be >= 1 with --factors")
    if sets < 2 or questions < 2:
        raise click.BadParameter("--factors needs --prompts >= 2 and --questions >= 2 (a spread needs two of each)")
    pool, completion_pairs = draw_pool(splits, size=pool_size, seed=seed, forms=ANSWER_FORMS, engine=engine,
                                       decoding=decoding)
    if max(shot_counts + [shots]) > len(pool):
        raise click.BadParameter(f"sets of {max(shot_counts + [shots])} exemplars from a pool of {len(pool)}")
    reference = few_shot_reference(splits["train"], shots)
    # Scored questions: training problems that no prompt here shows (not in the pool nor the reference).
    shown = pool.problems + splits["train"][:shots]
    shown_ids, shown_questions = {p.id for p in shown}, {" ".join(p.question.split()) for p in shown}
    candidates = [p for p in splits["train"]
                  if p.id not in shown_ids and " ".join(p.question.split()) not in shown_questions]
    rng = np.random.default_rng(seed + 123)
    train = [candidates[i] for i in rng.choice(len(candidates), min(questions, len(candidates)), replace=False)]

    def exemplar_sets(k: int) -> list[list[int]]:
        return [rng.choice(len(pool), k, replace=False).tolist() for _ in range(sets)]

    def decode_sets(k: int, form: str, picks: list[list[int]]) -> list:
        space = PromptSpace(vocab, 0, pool, shots=k, forms=ANSWER_FORMS)  # exemplar slots and the form only
        return [space.decode([i + 1 for i in row] + [ANSWER_FORMS.index(form)]) for row in picks]  # 0 is "none"

    # factor level -> its prompts (rows of its table), in the order the tables print
    base_sets = exemplar_sets(shots)
    levels: dict[str, list] = {f"exemplars {shots}-shot, {form}": decode_sets(shots, form, base_sets)
                               for form in ANSWER_FORMS}
    for k in shot_counts:
        levels[f"shots {k}, spaced"] = (levels[f"exemplars {shots}-shot, spaced"] if k == shots
                                        else decode_sets(k, "spaced", exemplar_sets(k)))
    words = PromptSpace(vocab, prompt_length)
    levels[f"words ({prompt_length} slots)"] = [words.decode(a) for a in words.sample(rng, sets)]
    whole = PromptSpace(vocab, prompt_length, pool, shots=shots, forms=ANSWER_FORMS)
    whole_actions = whole.sample(rng, sets)
    whole_name = f"whole space ({shots} exemplar slots or none, form, {prompt_length} word slots)"
    levels[whole_name] = [whole.decode(a) for a in whole_actions]
    references = {f'"{p}"' if p else "(no prompt)": p for p in REFERENCE_PROMPTS}
    references[reference_name(shots)] = reference
    levels["references"] = list(references.values())

    unique = list(dict.fromkeys(p for prompts in levels.values() for p in prompts))
    start = time.perf_counter()
    scored: dict = {}
    chunk_size = max(1, 256 // len(train))
    with tqdm(total=len(unique) * len(train), desc="factors", unit="pair") as bar:
        for at in range(0, len(unique), chunk_size):
            chunk = unique[at:at + chunk_size]
            r, infos = score_pairs(engine, mix, [q for _ in chunk for q in train], [p for p in chunk for _ in train],
                                   decoding, batch_label="headroom")
            correct = np.array([i["correct"] for i in infos], float).reshape(len(chunk), -1)
            for prompt, c, rw in zip(chunk, correct, r.reshape(len(chunk), -1)):
                scored[prompt] = (c, rw)
            bar.update(len(chunk) * len(train))
    seconds = time.perf_counter() - start
    correct = {name: np.array([scored[p][0] for p in prompts]) for name, prompts in levels.items()}
    reward = {name: np.array([scored[p][1] for p in prompts]) for name, prompts in levels.items()}

    def split(table: np.ndarray, rewards: np.ndarray | None = None, rows: str | None = None) -> dict:
        changed = (table.max(0) > 0) & (table.min(0) < 1)
        return {"rows": rows or f"{len(table)} prompts", "accuracy": variance_split(table),
                **({"reward": variance_split(rewards)} if rewards is not None else {}),
                "questions_any_prompt_changes": int(changed.sum())}

    form_names = [f"exemplars {shots}-shot, {form}" for form in ANSWER_FORMS]
    count_names = [f"shots {k}, spaced" for k in shot_counts]
    rows = {name: split(correct[name], reward[name]) for name in form_names}
    rows["answer form (between forms, same sets)"] = split(np.array([correct[n].mean(0) for n in form_names]),
                                                           np.array([reward[n].mean(0) for n in form_names]),
                                                           f"{len(form_names)} forms x {sets} sets")
    rows.update({name: split(correct[name], reward[name]) for name in count_names})
    if len(count_names) > 1:
        rows["number of shots (between counts)"] = split(np.array([correct[n].mean(0) for n in count_names]),
                                                         np.array([reward[n].mean(0) for n in count_names]),
                                                         f"{len(count_names)} counts x {sets} sets")
    for name in (f"words ({prompt_length} slots)", whole_name):
        rows[name] = split(correct[name], reward[name])
    paired = {f"{a} - {b}": paired_difference(correct[form_names[ANSWER_FORMS.index(a)]],
                                              correct[form_names[ANSWER_FORMS.index(b)]], seed=seed)
              for a, b in (("equation", "bare"), ("spaced", "bare"), ("spaced", "equation"), ("completion", "bare"),
                           ("completion", "spaced"))}
    hand = {name: {"accuracy": float(c.mean()), "reward": float(r.mean())}
            for name, c, r in zip(references, correct["references"], reward["references"])}

    # draw_pool does not return how many completions were correct: count those that differ from the fallback
    completions_own = sum(pool.answer(i, "completion") != pool.answer(i, "spaced") for i in range(len(pool)))
    summary = {"model": engine.name, "machine": machine(engine), "seed": seed, **settings,
               "questions": len(train), "sets_per_level": sets, "shots": shots, "shot_counts": shot_counts,
               "pool": len(pool), "pool_completions_unlike_spaced": completions_own, "prompt_length": prompt_length,
               "pairs": len(unique) * len(train) + completion_pairs, "seconds": seconds,
               "factors": rows, "answer_form_paired": paired, "references": hand}

    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    print(f"\nmodel {engine.name}; machine: {summary['machine']}")
    print(f"{len(train)} training questions (split seed {seed}), greedy, {settings['max_new_tokens']} new tokens; "
          f"pool {len(pool)} training problems (completion form: {completions_own} unlike the spaced form); "
          f"{sets} random prompts per level; {summary['pairs']} pairs ({completion_pairs} for the pool's "
          f"completions), scoring {seconds:.0f} s\n")
    print("| factor | rows | mean | true sd | noise sd | observed sd | min - max | split-half r | reward true sd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        a = row["accuracy"]
        print(f"| {name} | {row['rows']} | {pct(a['mean'])}% | **{pct(a['true_sd'])}** | {pct(a['noise_sd'])} | "
              f"{pct(a['observed_sd'])} | {pct(a['min'])} - {pct(a['max'])}% | {a['split_half_r']:.2f} | "
              f"{row['reward']['true_sd']:.3f} |")
    print("\nanswer form, paired (same sets and questions): " + "; ".join(
        f"{form} {pct(correct[name].mean())}%" for form, name in zip(ANSWER_FORMS, form_names)))
    for name, d in paired.items():
        print(f"  {name}: {pct(d['difference']):>6} points, 95% CI [{pct(d['ci95'][0])}, {pct(d['ci95'][1])}]")
    print("\nreferences on the same questions: "
          + "; ".join(f"{name} {pct(v['accuracy'])}%" for name, v in hand.items()))
    print("(sd columns in accuracy points; true sd = the spread left after question sampling's share)")

    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as handle:
            handle.write(dumps_json({"summary": summary, "question_ids": [p.id for p in train], "pool": pool.to_dict(),
                       "prompts": {name: [as_prompt(p).to_dict() for p in prompts] for name, prompts in levels.items()},
                       "whole_space_actions": whole_actions.tolist(),
                       "correct": {name: t.tolist() for name, t in correct.items()},
                       "reward": {name: t.tolist() for name, t in reward.items()}}))
    return summary


@click.command()
@click.option("--prompts", "n_prompts", default=150, show_default=True,
              help="Random prompts in the landscape (with --factors: per factor level, e.g. 8).")
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
@click.option("--model", default=None, help="Model path or id (default: the default model).")
@click.option("--factors", is_flag=True,
              help="Measure each factor of a structured prompt (exemplars, answer form, number of shots, words, "
                   "the whole space) instead of the word landscape and format ceiling; --prompts is then the "
                   "number of random prompts (exemplar sets) per factor level.")
@click.option("--shots", default=2, show_default=True,
              help="With --factors: exemplars per set for the exemplar and answer-form factors and the whole space.")
@click.option("--shot-counts", default="1,2,4", show_default=True,
              help="With --factors: the set sizes of the number-of-shots factor (spaced form).")
@click.option("--pool", "pool_size", default=field_default("exemplar_pool"), show_default=True,
              help="With --factors: the exemplar pool (as a run's --exemplar-pool), drawn from the training split.")
@click.option("--out", default=None, help="Write the tables and the summary as JSON here.")
def main(n_prompts, questions, ceiling_questions, prompt_length, kinds, difficulty, num_problems, max_new_tokens, seed,
         model, factors, shots, shot_counts, pool_size, out):
    """How much is there to learn? By default: the landscape of random word prompts and the format ceiling.
    With --factors: the same spread for each factor of a structured prompt (exemplars, answer form, number
    of shots, words, the whole space). The file's docstring says what each number is."""
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
    engine = TransformersEngine.load(model)
    vocab = ActionVocab.from_spec(engine.tokenizer, field_default("action_vocab"), empty=field_default("empty_action"))
    mix = RewardMix(list(OracleConfig().rewards), engine=engine)  # a run's reward
    decoding = Decoding(max_new_tokens)
    if factors:
        counts = sorted({int(c) for c in shot_counts.split(",") if c.strip()})
        factor_landscape(engine, splits, vocab, mix, decoding, questions=questions, sets=n_prompts,
                         prompt_length=prompt_length, shots=shots, shot_counts=counts, pool_size=pool_size,
                         seed=seed, settings={"kinds": kinds, "difficulty": difficulty, "num_problems": num_problems,
                                              "max_new_tokens": max_new_tokens}, out=out)
        return
    rng = np.random.default_rng(seed + 123)
    train = [splits["train"][i] for i in rng.choice(len(splits["train"]), questions, replace=False)]
    actions = rng.integers(0, len(vocab), size=(n_prompts, prompt_length))
    prompts = list(REFERENCE_PROMPTS) + [vocab.decode(a.tolist()) for a in actions]

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
               "machine": machine(engine),
               "landscape": landscape, "format_ceiling": ceiling}
    print(json.dumps(summary, indent=2))
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as handle:
            handle.write(dumps_json({"summary": summary, "prompts": prompts, "correct": correct.tolist(),
                                     "reward": reward.tolist(), "actions": actions.tolist()}))


if __name__ == "__main__":
    main()
