"""How much a prompt per question kind could gain over one prompt for all, measured before any learner runs.

    python bench/conditioning_headroom.py                       # 13 kinds x 24 questions, 40 candidate prompts
    python bench/conditioning_headroom.py --per-kind 40 --out runs/headroom

Issue 33's second goal. On mixed problems (every generator kind), each candidate prompt is scored on the same
questions (greedy, the default decoding, `correct`). Candidates: the hand-written prompts, the few-shot
reference, per kind two pool problems of that kind in the model's own (spaced) form with and without
"Give the answer as a single number.", and `--random` draws from the Refiner's prompt space. Cross-fitted
(2 folds, each kind's questions split in halves): on one half choose the best single prompt (overall) and the
best prompt per kind; score both on the other half; swap; average. The difference is the headroom of
conditioning on the kind, winner's curse included (the in-sample figures are printed beside it to show its
size). Nearest-neighbour retrieval (each question's two most similar pool problems, spaced form) is scored too:
a conditioned prompt that needs no kind label and no learning.

How well the engine's question features separate the kinds: a linear probe (softmax regression on the
centred features, cross-fitted the same way) and the pool's 1-nearest-neighbour kind.

Questions come from the training split only (development data: never validation or test); the pool is drawn
from it as a run draws it (`prompt_space.draw_pool`) and its problems are not among the scored questions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch

from common import HAND_WRITTEN, label, machine, pct  # bench/ is on the path

from rlprompt_math.config import DataConfig, EngineConfig, GENERATOR_KINDS

SINGLE_NUMBER = "Give the answer as a single number."


def candidates(train, pool, space, n_random: int, seed: int) -> dict:
    """name -> one prompt for every question."""
    from rlprompt_math.exemplars import few_shot_reference, reference_name
    from rlprompt_math.templates import Prompt

    out = {label(p): p for p in HAND_WRITTEN}
    out[reference_name(2)] = few_shot_reference(train, 2)
    for kind in sorted({p.kind for p in pool.problems}):
        picks = [i for i, p in enumerate(pool.problems) if p.kind == kind][:2]
        shown = tuple(pool.exemplar(i, "spaced") for i in picks)
        out[f"2 {kind} exemplars"] = Prompt("", shown)
        out[f"2 {kind} exemplars + single number"] = Prompt(SINGLE_NUMBER, shown)
    rng = np.random.default_rng(seed)
    for j, row in enumerate(space.sample(rng, n_random)):
        out[f"random prompt {j}"] = space.decode(row)
    return out


def probe_accuracy(features: torch.Tensor, kinds: np.ndarray, fit: np.ndarray) -> float:
    """Softmax regression on centred, unit-norm features: fit on `fit` rows, accuracy on the others."""
    names = sorted(set(kinds))
    y = torch.tensor([names.index(k) for k in kinds])
    x = torch.nn.functional.normalize(features - features[fit].mean(0), dim=-1)
    weights = torch.zeros(x.shape[1], len(names), requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=200, line_search_fn="strong_wolfe")
    fit_t = torch.as_tensor(fit)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[fit_t] @ weights + bias, y[fit_t]) + 1e-3 * weights.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[~fit_t] @ weights + bias).argmax(-1)
    return float((predicted == y[~fit_t]).float().mean())


@click.command()
@click.option("--per-kind", default=24, show_default=True, type=click.IntRange(min=4),
              help="scored questions of each kind")
@click.option("--random", "n_random", default=8, show_default=True, help="random prompts from the prompt space")
@click.option("--seed", default=0, show_default=True, help="the generator, split and pool seed")
@click.option("--dtype", default="auto", show_default=True)
@click.option("--out", default="runs/conditioning-headroom", show_default=True, type=click.Path(file_okay=False))
def main(per_kind, n_random, seed, dtype, out):
    from rlprompt_math.data import problems_from_config
    from rlprompt_math.engines import load_engine
    from rlprompt_math.evaluation import score_system
    from rlprompt_math.policies import centred_cosine
    from rlprompt_math.oracle import decoding_from
    from rlprompt_math.config import OracleConfig, PolicyConfig
    from rlprompt_math.prompt_space import PromptSpace, draw_pool
    from rlprompt_math.rewards import RewardMix
    from rlprompt_math.templates import Prompt
    from rlprompt_math.vocab import ActionVocab

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(EngineConfig(dtype=dtype))
    _, splits, _ = problems_from_config(DataConfig(kinds="all", num_problems=6000), seed)
    pool, _ = draw_pool(splits, size=PolicyConfig.exemplar_pool, seed=seed, forms=("bare", "equation", "spaced"))
    # Not scored: the pool's problems, nor the few-shot reference's (the first two training problems), whose
    # answers a candidate shows.
    in_pool = {p.id for p in pool.problems} | {p.id for p in splits["train"][:2]}
    questions = []
    for kind in GENERATOR_KINDS:
        questions += [p for p in splits["train"] if p.kind == kind and p.id not in in_pool][:per_kind]
    kinds = np.array([p.kind for p in questions])
    vocab = ActionVocab.from_spec(engine.tokenizer, PolicyConfig.action_vocab)
    space = PromptSpace(vocab, PolicyConfig.prompt_length, pool, 2, ("bare", "equation", "spaced"))
    systems = candidates(splits["train"], pool, space, n_random, seed)
    decoding, grader = decoding_from(OracleConfig()), RewardMix(["correct"])
    click.echo(f"machine: {machine(engine)}; {len(questions)} questions ({per_kind} per kind, "
               f"{len(set(kinds))} kinds), "
               f"{len(systems)} candidate prompts: {len(questions) * len(systems)} pairs")

    correct = {}
    for i, (name, prompt) in enumerate(systems.items()):
        correct[name] = score_system(name, engine, grader, questions, [prompt] * len(questions), decoding).correct
        click.echo(f"[{i + 1}/{len(systems)}] {name}: {pct(correct[name].mean())}")
    features = engine.question_features([p.question for p in questions])
    keys = engine.question_features([p.question for p in pool.problems])
    nearest = centred_cosine(features, keys).topk(2, dim=-1).indices.tolist()  # the Refiner's pointer similarity
    knn_prompts = [Prompt("", tuple(pool.exemplar(i, "spaced") for i in row)) for row in nearest]
    knn = score_system("nearest neighbours", engine, grader, questions, knn_prompts, decoding).correct
    nn_kind = float(np.mean([pool.problems[row[0]].kind == k for row, k in zip(nearest, kinds)]))

    # Two folds: within each kind, alternate questions go to half A or B.
    half = np.zeros(len(questions), bool)
    for kind in set(kinds):
        rows = np.flatnonzero(kinds == kind)
        half[rows[::2]] = True
    names = list(correct)
    matrix = np.stack([correct[n] for n in names])  # [systems, questions]
    folds = []
    for fit in (half, ~half):
        score = ~fit
        single = names[int(matrix[:, fit].mean(1).argmax())]
        per_kind_pick, per_kind_correct = {}, np.zeros(len(questions), bool)
        for kind in sorted(set(kinds)):
            rows_fit = fit & (kinds == kind)
            best = names[int(matrix[:, rows_fit].mean(1).argmax())]
            per_kind_pick[kind] = best
            per_kind_correct[kinds == kind] = correct[best][kinds == kind]  # scored on `score` rows, in-sample on `fit`
        folds.append({"single": single, "single_accuracy": float(correct[single][score].mean()),
                      "single_in_sample": float(correct[single][fit].mean()),
                      "per_kind": per_kind_pick, "per_kind_accuracy": float(per_kind_correct[score].mean()),
                      "per_kind_in_sample": float(per_kind_correct[fit].mean()),
                      "knn_accuracy": float(knn[score].mean()),
                      "probe_accuracy": probe_accuracy(features, kinds, fit)})
    mean = {key: float(np.mean([f[key] for f in folds])) for key in
            ("single_accuracy", "per_kind_accuracy", "single_in_sample", "per_kind_in_sample", "knn_accuracy",
             "probe_accuracy")}
    headroom = mean["per_kind_accuracy"] - mean["single_accuracy"]
    per_kind_table = {kind: {name: float(correct[name][kinds == kind].mean()) for name in names}
                      for kind in sorted(set(kinds))}
    result = {"machine": machine(engine), "model": engine.name, "seed": seed, "per_kind": per_kind,
              "n_questions": len(questions), "candidates": names, "folds": folds, "mean": mean,
              "headroom": headroom, "nearest_neighbour_kind_accuracy": nn_kind, "accuracy": per_kind_table,
              "overall": {name: float(correct[name].mean()) for name in names},
              "knn_overall": float(knn.mean()), "wall_s": time.perf_counter() - started}
    (out / "headroom.json").write_text(json.dumps(result, indent=2))

    lines = [f"Machine: {result['machine']}. {len(questions)} training-split questions ({per_kind} of each of "
             f"{len(set(kinds))} kinds), {len(names)} candidate prompts, greedy, `correct`.", "",
             "| cross-fitted (2 folds) | held-out half | in-sample half |", "| --- | --- | --- |",
             f"| best single prompt | {pct(mean['single_accuracy'])} | {pct(mean['single_in_sample'])} |",
             f"| best prompt per kind | {pct(mean['per_kind_accuracy'])} | {pct(mean['per_kind_in_sample'])} |",
             f"| nearest-neighbour exemplars (no kind label, no learning) | {pct(mean['knn_accuracy'])} | |", "",
             f"**Headroom of a prompt per kind: {100 * headroom:+.1f} points** (held-out halves). "
             f"Chosen single prompts: {', '.join(f['single'] for f in folds)}.", "",
             f"Features separate the kinds: linear probe {pct(mean['probe_accuracy'])} (cross-fitted), the pool's "
             f"nearest neighbour is of the question's kind for {pct(nn_kind)}.", "",
             "| kind | best single (fold 1) | best for the kind (fold 1 pick) | nearest neighbours | pick |",
             "| --- | --- | --- | --- | --- |"]
    for kind in sorted(set(kinds)):
        pick = folds[0]["per_kind"][kind]
        single = per_kind_table[kind][folds[0]["single"]]
        lines.append(f"| {kind} | {pct(single)} | {pct(per_kind_table[kind][pick])} | "
                     f"{pct(float(knn[kinds == kind].mean()))} | {pick} |")
    lines.append(f"\nWall time {result['wall_s'] / 60:.1f} min.")
    (out / "headroom.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
