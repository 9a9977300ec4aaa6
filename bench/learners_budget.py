"""Learners at equal oracle pairs: REINFORCE against random search, successive halving and TPE, at several budgets.

    python bench/learners_budget.py --seeds 0,1,2,3,4 --steps 8,24,72           # about 500, 1,500 and 5,000 pairs
    python bench/learners_budget.py --seeds 0,1,2 --steps 4,12,36 --out runs/learners-budget   # what fits an hour
    python bench/learners_budget.py --report-only --out runs/learners-budget

Issue 32's third goal. On the default task (the generator's two-operand arithmetic, the default run's prompt space:
2 exemplar slots over a 32-problem pool, the answer form, 8 instruction slots; the default reward), per seed and per
budget, each learner trains through the one wiring (`common.train_one`) at exactly REINFORCE's oracle pairs
(`agents.oracle_pairs_planned`, pool, training and validation counted):
  * reinforce: `--steps S` of 8 prompts x 8 questions, validated (--val-size questions) untrained and every S/3
    steps; the kept prompt its best validated greedy prompt;
  * random: the same rounds of random prompts, as many finalists as REINFORCE's validations
    (`RandomSearchAgent.finalists_for`);
  * halving: the same training pairs spent by successive halving (`--agent halving`), as many finalists;
  * reinforce-halving, reinforce-epochs (with --learners): REINFORCE whose last third of steps measure its greedy
    and best samples by successive halving (`--halving-steps`, the survivors its finalists, validated only then),
    and REINFORCE updating 4 times per batch of rewards (`--update-epochs 4`), at the same pairs;
  * tpe: MIPROv2's schedule (one trial per step on a minibatch of about 35 questions, a full evaluation every 5
    trials, the empty prompt first), its trials and minibatch chosen so that its pairs are REINFORCE's
    (`common.tpe_settings`; where no minibatch of 30-40 makes them exact, the nearest plan below, and the tables
    show every learner's pairs).
Then every kept prompt, the hand-written prompts and the 2-shot reference meet the seed's first --test-size test
problems (greedy, the grader's correctness). Reported per learner and budget, over seeds: test accuracy (mean, and a
95% bootstrap interval over the pooled questions), the validation-minus-test gap of the kept prompt (the winner's
curse), REINFORCE minus the learner with a McNemar test pooled over seeds, and the pairs each learner needs to come
within 1 point of the best test accuracy any learner reached on that seed; then whether the learners differ at all
over seeds (a permutation test per budget) and whether validation ranks the kept prompts' test accuracy within a seed
(`noise_lines`). Written to --out/learners.json,
learners.md and learners.png (test accuracy and the gap against pairs).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np

from common import HAND_WRITTEN, base_settings, label, learner_settings, machine, pct, train_one  # bench/ on the path

LEARNERS = ("reinforce", "random", "halving", "tpe", "reinforce-halving", "reinforce-epochs")
NAMES = {"reinforce": "REINFORCE", "random": "random search", "halving": "successive halving",
         "tpe": "TPE (MIPROv2's schedule)",
         "reinforce-halving": "REINFORCE, last third by halving (--halving-steps)",
         "reinforce-epochs": "REINFORCE, 4 updates per batch (--update-epochs 4)"}


def reinforce_settings(steps: int, val_size: int) -> dict:
    return base_settings(steps=steps, batch_size=8, prompts_per_question=8, val_size=val_size,
                         eval_every=max(1, math.ceil(steps / 3)), finalists=0)


@click.command()
@click.option("--seeds", default="0,1,2,3,4", show_default=True)
@click.option("--steps", default="8,24,72", show_default=True,
              help="REINFORCE's steps at each budget (8 x 8 pairs a step; with --val-size 50: 744, 1,768 and 4,840 "
                   "oracle pairs)")
@click.option("--val-size", default=50, show_default=True)
@click.option("--test-size", default=200, show_default=True)
@click.option("--learners", default=",".join(LEARNERS[:4]), show_default=True, help=", ".join(LEARNERS))
@click.option("--dtype", default="auto", show_default=True)
@click.option("--reuse", is_flag=True, help="load each run already finished under --out with the same settings")
@click.option("--report-only", is_flag=True, help="write learners.md and learners.png again from learners.json")
@click.option("--against", default="reinforce", show_default=True,
              help="the learner every other is paired against in the report (one of --learners)")
@click.option("--out", default="runs/learners-budget", show_default=True, type=click.Path(file_okay=False))
def main(seeds, steps, val_size, test_size, learners, dtype, reuse, report_only, against, out):
    out = Path(out)
    if report_only:
        results = json.loads((out / "learners.json").read_text())
        if learners != ",".join(LEARNERS[:4]):  # a subset (or more) of what was trained, in this order
            results["learners"] = [x.strip() for x in learners.split(",") if x.strip()]
        write_report(out, {**results, "against": against})
        return
    from rlprompt_math.config import DataConfig, EngineConfig, RunConfig
    from rlprompt_math.data import problems_from_config
    from rlprompt_math.engines import load_engine
    from rlprompt_math.evaluation import few_shot_system, score_system
    from rlprompt_math.oracle import decoding_from
    from rlprompt_math.rewards import RewardMix

    chosen = [x.strip() for x in learners.split(",") if x.strip()]
    if "reinforce" not in chosen or set(chosen) - set(LEARNERS):
        raise click.BadParameter(f"learners of {', '.join(LEARNERS)}, reinforce among them", param_hint="--learners")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(EngineConfig(dtype=dtype))
    decoding, grader = decoding_from(RunConfig().oracle), RewardMix(["correct"])
    budgets = [int(s) for s in steps.split(",")]
    results = {"machine": machine(engine), "model": engine.name, "val_size": val_size, "steps": budgets,
               "learners": chosen, "against": against, "seeds": {}}
    if (out / "learners.json").exists() and reuse:  # seeds finished earlier stay in the report
        results["seeds"] = json.loads((out / "learners.json").read_text()).get("seeds", {})
    click.echo(f"machine: {results['machine']}")
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        _, splits, _ = problems_from_config(DataConfig(), seed)
        test = splits["test"][:test_size]
        runs, systems = {}, {}
        for step_count in budgets:
            reinforce = reinforce_settings(step_count, val_size)
            for learner in chosen:
                settings = learner_settings(learner, reinforce)
                name = f"{learner}@{step_count}"
                trained = train_one(engine, splits, settings, seed, out / f"{learner}-{step_count}-s{seed}", reuse)
                summary = trained["summary"]
                runs[name] = {"learner": learner, "reinforce_steps": step_count,
                              "oracle_pairs": summary["oracle_pairs"], "val_accuracy": summary["best_val_accuracy"],
                              "train_s": trained["wall_s"],
                              "settings": {k: settings[k] for k in ("steps", "batch_size", "prompts_per_question",
                                                                   "eval_every", "finalists")}}
                systems[name] = trained["prompts_of"](test)
                click.echo(f"seed {seed}, {name}: {summary['oracle_pairs']:,} pairs, validation "
                           f"{pct(summary['best_val_accuracy'])}, {trained['wall_s']:.0f} s")
        for prompt in HAND_WRITTEN:
            systems[label(prompt)] = [prompt] * len(test)
        for name, prompt in few_shot_system(splits["train"], 2).items():
            systems[name] = [prompt] * len(test)
        tests = {}
        for name, prompts in systems.items():
            result = score_system(name, engine, grader, test, prompts, decoding)
            tests[name] = {"correct": result.correct.astype(int).tolist(), "prompt": str(prompts[0])}
        results["seeds"][str(seed)] = {"n_test": len(test), "runs": runs, "test": tests}
        (out / "learners.json").write_text(json.dumps(results, indent=1))
    results["wall_s"] = time.perf_counter() - started
    (out / "learners.json").write_text(json.dumps(results, indent=1))
    write_report(out, results)


def _pooled(results: dict, name: str) -> np.ndarray:
    return np.concatenate([np.array(s["test"][name]["correct"], bool) for s in results["seeds"].values()])


def write_report(out: Path, results: dict) -> None:
    from rlprompt_math.evaluation import bootstrap_ci, mcnemar_p

    seeds = results["seeds"]
    learners, budgets, against = results["learners"], results["steps"], results.get("against", "reinforce")
    first = next(iter(seeds.values()))
    references = [n for n in first["test"] if n not in first["runs"]]
    sizes = sorted({s["n_test"] for s in seeds.values()})
    tested = f"{sizes[0]}" if len(sizes) == 1 else ", ".join(str(s["n_test"]) for s in seeds.values())
    lines = [f"Machine: {results['machine']}. Seeds {', '.join(seeds)}; {tested} test problems per seed (the first "
             "--test-size of each seed's test split); "
             f"validation {results['val_size']} questions." + (f" Total {results['wall_s'] / 60:.1f} min."
                                                             if "wall_s" in results else ""), "",
             "| REINFORCE steps | learner | oracle pairs (per seed) | test accuracy, mean ± sd over seeds | "
             f"pooled 95% CI | validation minus test (points) | {NAMES[against]} minus it (points; pooled McNemar p) | "
             "per seed |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {}
    for steps in budgets:
        base = _pooled(results, f"{against}@{steps}")
        for learner in learners:
            name = f"{learner}@{steps}"
            accs = [float(np.mean(s["test"][name]["correct"])) for s in seeds.values()]
            gaps = [s["runs"][name]["val_accuracy"] - a for s, a in zip(seeds.values(), accs)]
            pairs = sorted({s["runs"][name]["oracle_pairs"] for s in seeds.values()})
            pooled = _pooled(results, name)
            low, high = bootstrap_ci(pooled)
            versus = "" if learner == against else \
                f"{100 * (base.mean() - pooled.mean()):+.1f} (p = {mcnemar_p(base, pooled):.2g})"
            summary[name] = {"mean": float(np.mean(accs)), "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                             "gap": float(np.mean(gaps)), "pairs": pairs}
            lines.append(f"| {steps} | {NAMES[learner]} | {', '.join(f'{p:,}' for p in pairs)} | "
                         f"{pct(np.mean(accs))} ± {100 * summary[name]['sd']:.1f} | {pct(low)}-{pct(high)} | "
                         f"{100 * np.mean(gaps):+.1f} | {versus} | {', '.join(pct(a) for a in accs)} |")
    lines += ["", "| reference (the same test problems) | test accuracy, mean over seeds | per seed |", "| --- | --- | --- |"]
    for name in references:
        accs = [float(np.mean(s["test"][name]["correct"])) for s in seeds.values()]
        lines.append(f"| {name} | {pct(np.mean(accs))} | {', '.join(pct(a) for a in accs)} |")
    lines += ["", *noise_lines(results)]
    # pairs to come within 1 point of the best test accuracy any learner reached on the seed
    lines += ["", "Oracle pairs each learner needed to come within 1 point of the best kept prompt any learner found "
              "on the seed (test accuracy; '-': at no budget):", "",
              "| learner | " + " | ".join(f"seed {s}" for s in seeds) + " |", "| --- |" + " --- |" * len(seeds)]
    for learner in learners:
        cells = []
        for seed in seeds.values():
            best = max(np.mean(seed["test"][f"{x}@{b}"]["correct"]) for x in learners for b in budgets)
            reached = [seed["runs"][f"{learner}@{b}"]["oracle_pairs"] for b in budgets
                       if np.mean(seed["test"][f"{learner}@{b}"]["correct"]) >= best - 0.01]
            cells.append(f"{min(reached):,}" if reached else "-")
        lines.append(f"| {NAMES[learner]} | " + " | ".join(cells) + " |")
    lines += ["", "Kept prompts:", ""]
    for seed, entry in seeds.items():
        for name in entry["runs"]:
            lines.append(f"- seed {seed}, {name}: {entry['test'][name]['prompt']!r}")
    (out / "learners.md").write_text("\n".join(lines) + "\n")
    _plot(out / "learners.png", results, summary)
    click.echo("\n".join(lines))


def learner_effect_p(accuracy: np.ndarray, draws: int = 20000, seed: int = 0) -> float:
    """Permutation p of "the learners differ" from `accuracy` [seeds, learners]: the spread (variance) of the
    learners' means over seeds against its spread when each seed's accuracies are shuffled among the learners."""
    rng = np.random.default_rng(seed)
    observed = accuracy.mean(0).var()
    shuffled = rng.permuted(np.broadcast_to(accuracy, (draws, *accuracy.shape)), axis=2).mean(1).var(1)
    return float((1 + np.sum(shuffled >= observed - 1e-12)) / (draws + 1))


def _accuracy(entry: dict, name: str) -> float:
    """A system's test accuracy on one seed's entry of learners.json."""
    return float(np.mean(entry["test"][name]["correct"]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their mean rank (validation accuracies on 50 questions tie often)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return np.array([ranks[x == value].mean() for value in x])


def noise_lines(results: dict) -> list[str]:
    """How far the learners' ranking can be read: whether the learners differ at all at each budget (a permutation
    test over seeds), how much the difference between two learners varies over seeds, and whether the validation
    accuracy that kept each prompt ranks the kept prompts' test accuracies within a seed."""
    seeds, learners, budgets = results["seeds"], results["learners"], results["steps"]
    against = results.get("against", "reinforce")
    lines = ["How far the ranking can be read. Learners differ at a budget (permutation test: the spread of the "
             "learners' means against its spread with each seed's accuracies shuffled among the learners):"]
    differences = []  # sd over seeds of the per-seed difference between `against` and each other learner
    for steps in budgets:
        accuracy = np.array([[_accuracy(s, f"{x}@{steps}") for x in learners] for s in seeds.values()])
        lines.append(f"- {steps} steps: learners' means {100 * accuracy.mean(0).min():.1f}%-"
                     f"{100 * accuracy.mean(0).max():.1f}%, standard error of one learner's mean "
                     f"{100 * accuracy.std(0, ddof=1).mean() / np.sqrt(len(seeds)):.1f} points, "
                     f"p = {learner_effect_p(accuracy):.2g}")
        column = learners.index(against)
        differences += [np.std(accuracy[:, column] - accuracy[:, j], ddof=1)
                        for j in range(len(learners)) if j != column]
    if len(seeds) > 1 and differences:
        sd = float(np.mean(differences))
        lines.append(f"- the per-seed difference between {NAMES[against]} and another learner varies over seeds with "
                     f"sd {100 * sd:.1f} points ({100 * min(differences):.1f}-{100 * max(differences):.1f}): a true "
                     f"2-point difference needs about {math.ceil(((1.96 + 0.84) * sd / 0.02) ** 2)} seeds to reach "
                     "p < 0.05 four times in five (paired over seeds)")
    lines += ["", "Within a seed, the kept prompts' validation accuracy against their test accuracy (Spearman over "
              "every learner and budget), and their test accuracies' spread against one prompt's binomial sd on the "
              "seed's test problems:"]
    for seed, entry in seeds.items():
        names = list(entry["runs"])
        val = np.array([entry["runs"][n]["val_accuracy"] for n in names])
        test = np.array([_accuracy(entry, n) for n in names])
        p = test.mean()
        lines.append(f"- seed {seed}: Spearman {np.corrcoef(_average_ranks(val), _average_ranks(test))[0, 1]:+.2f}; "
                     f"test sd {100 * test.std(ddof=1):.1f} points against "
                     f"{100 * np.sqrt(p * (1 - p) / entry['n_test']):.1f}")
    return lines


def _plot(path: Path, results: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, curves, entropy) = plt.subplots(1, 4, figsize=(21, 4))
    for learner in results["learners"]:
        rows = [summary[f"{learner}@{b}"] for b in results["steps"]]
        x = [np.mean(r["pairs"]) for r in rows]
        left.errorbar(x, [100 * r["mean"] for r in rows], yerr=[100 * r["sd"] for r in rows], marker="o",
                      capsize=3, label=NAMES[learner])
        right.plot(x, [100 * r["gap"] for r in rows], marker="o", label=NAMES[learner])
    seeds = results["seeds"].values()
    first = next(iter(seeds))
    for name in [n for n in first["test"] if n not in first["runs"]]:
        mean = 100 * np.mean([np.mean(s["test"][name]["correct"]) for s in seeds])
        if name.startswith("2-shot") or mean == max(100 * np.mean([np.mean(s["test"][n]["correct"]) for s in seeds])
                                                   for n in first["test"] if n not in first["runs"]):
            left.axhline(mean, ls=":", color="grey")
            left.text(left.get_xlim()[0], mean, f" {name[:40]}", fontsize=7, va="bottom")
    left.set(xscale="log", xlabel="oracle pairs (training + validation)", ylabel="test accuracy (%), mean ± sd",
             title="kept prompt on held-out test")
    right.axhline(0, color="grey", lw=0.8)
    right.set(xscale="log", xlabel="oracle pairs", ylabel="validation minus test (points)",
              title="winner's curse")
    # the largest budget's runs, from their metrics.csv: validation against pairs, REINFORCE's entropy per slot kind
    import csv

    largest = results["steps"][-1]
    colours = dict(zip(results["learners"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for seed in results["seeds"]:
        for learner in results["learners"]:
            metrics = path.parent / f"{learner}-{largest}-s{seed}" / "metrics.csv"
            if not metrics.exists():
                continue
            with open(metrics) as handle:
                rows = list(csv.DictReader(handle))
            points = [(int(float(r["oracle_pairs"])), 100 * float(r["val_accuracy"])) for r in rows
                      if r.get("val_accuracy") not in (None, "", "nan")]
            if points:
                curves.plot(*zip(*points), marker=".", color=colours[learner], alpha=0.7,
                            label=NAMES[learner] if seed == next(iter(results["seeds"])) else None)
            if learner == "reinforce":
                for key, style in (("entropy_exemplars", "-"), ("entropy_form", "--"), ("entropy_words", ":")):
                    steps = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
                    if steps:
                        entropy.plot(*zip(*steps), style, color="C0",
                                     label=key.replace("entropy_", "") if seed == next(iter(results["seeds"])) else None)
    curves.set(xlabel="oracle pairs spent", ylabel="validation accuracy (%)",
               title=f"validations during the runs at {largest} REINFORCE steps (every seed)")
    entropy.set(xlabel="step", ylabel="nats per slot", title=f"REINFORCE's policy entropy at {largest} steps (every seed)")
    for axis in (curves, entropy):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
