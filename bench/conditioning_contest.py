"""The Refiner (a prompt per question) against one prompt for all and two conditioned baselines, on mixed problems,
at equal oracle pairs.

    python bench/conditioning_contest.py --seeds 0,1,2                  # the default run's settings, every kind
    python bench/conditioning_contest.py --seeds 0 --steps 13 --test-size 100 --out runs/contest-smoke
    python bench/conditioning_contest.py --seeds 0 --learners refiner,knn --reuse   # a subset, the refiner among them

Issue 33's first goal. Per seed, on the generator's every kind (`--kinds all`), up to five learners (`--learners`,
by short name; default all) train with the default run's settings (30 steps x 8 questions x 8 prompts, 100
validation questions every 10 steps, 2 exemplar slots over a 32-problem pool, answer form, 8 instruction slots,
answer_likelihood) through the one wiring (`common.train_one`):
  * refiner: REINFORCE with the Refiner (question features -> a prompt per question; its exemplar slots a pointer
    head started at nearest-neighbour retrieval);
  * reinforce: REINFORCE with one prompt for all (unconditioned);
  * random: random search, one prompt for all;
  * knn: nearest-neighbour exemplars per question (`--agent knn`: each question's 2 most similar pool problems,
    answer form and words found by random search with the retrieved exemplars in place);
  * cluster: cluster-then-search (`--agent cluster`: k-means on question features, k the number of kinds, random
    search per cluster; it gives every cluster a step, so --steps must be at least the kinds, 13).
The last three validate as many finalists as make their oracle pairs REINFORCE's at the same settings
(`common.equal_budget`); each learner's oracle pairs, from its run summary, are in the tables.
Then, on the seed's test problems, every learned system beside the hand-written prompts and the 2-shot reference,
paired against the Refiner: accuracy with 95% bootstrap intervals, McNemar p, and the same per kind
(`evaluation.by_kind`), with the distinct prompts each wrote. Written to --out/contest.json and --out/contest.md;
`--report-only` renders them again from contest.json, one from before the knn and cluster learners included (its
"nearest-neighbour exemplars" row is the untrained refiner's pointer with random search's form and words).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from common import HAND_WRITTEN, equal_budget, label, machine, pct, train_one  # bench/ is on the path

REFINER = "REINFORCE, refiner (a prompt per question)"
KNN = "nearest-neighbour exemplars per question, searched form and words (--agent knn)"
CLUSTER = "cluster-then-search, a prompt per cluster (--agent cluster)"
LEARNERS = {REFINER: {"agent": "reinforce", "policy": "refiner"},
            "REINFORCE, one prompt for all": {"agent": "reinforce", "policy": "unconditioned"},
            "random search, one prompt for all": {"agent": "random", "policy": "unconditioned"},
            KNN: {"agent": "knn", "policy": "unconditioned"},
            CLUSTER: {"agent": "cluster", "policy": "unconditioned"}}
SHORT = dict(zip(("refiner", "reinforce", "random", "knn", "cluster"), LEARNERS))  # --learners names
ONE_FOR_ALL = ("REINFORCE, one prompt for all", "random search, one prompt for all")
# contest.json files from before the knn agent hold this row instead: the untrained refiner's pointer (its 2 most
# similar pool problems) with random search's form and words, trained by no one; --report-only still shows it.
UNTRAINED_POINTER = "nearest-neighbour exemplars (+ random search's form and words)"


def run_dir(out: Path, name: str, seed: int) -> Path:
    overrides = LEARNERS[name]
    return out / f"{overrides['agent']}-{overrides['policy']}-s{seed}"


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--steps", default=30, show_default=True)
@click.option("--num-problems", default=4000, show_default=True, help="generated problems per seed (before the split)")
@click.option("--test-size", default=400, show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--learners", default=",".join(SHORT), show_default=True,
              help=f"comma list of the learners to train (of {', '.join(SHORT)}; the refiner is the one every system "
                   "is paired against, so it must be among them)")
@click.option("--reuse", is_flag=True, help="load each run already finished under --out with the same settings")
@click.option("--report-only", is_flag=True, help="write contest.md and contest.png again from --out/contest.json")
@click.option("--out", default="runs/conditioning-contest", show_default=True, type=click.Path(file_okay=False))
def main(seeds, steps, num_problems, test_size, dtype, learners, reuse, report_only, out):
    chosen = [x.strip() for x in learners.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in SHORT]
    if unknown or "refiner" not in chosen:
        raise click.BadParameter(f"give learners of {', '.join(SHORT)}, refiner among them (got {learners!r})",
                                 param_hint="--learners")
    chosen = [name for short, name in SHORT.items() if short in chosen]  # the table's order
    if report_only:
        write_report(Path(out), json.loads((Path(out) / "contest.json").read_text()))
        return
    from rlprompt_math.config import DataConfig, EngineConfig, RunConfig
    from rlprompt_math.data import problems_from_config
    from rlprompt_math.engines import load_engine
    from rlprompt_math.evaluation import compare_systems, few_shot_system
    from rlprompt_math.oracle import decoding_from
    from rlprompt_math.rewards import RewardMix

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(EngineConfig(dtype=dtype))
    defaults = RunConfig().to_flat()
    eval_every = defaults["eval_every"]
    not_settings = ("resume", "name", "output_dir", "quiet", "dtype", "device")  # where and how, not what is trained
    base = {**{k: v for k, v in defaults.items() if k not in not_settings},
            "kinds": "all", "num_problems": num_problems, "steps": steps, "eval_every": eval_every, "quiet": True}
    click.echo(f"machine: {machine(engine)}")
    results = {"machine": machine(engine), "model": engine.name, "settings": base,
               "learners": [short for short, name in SHORT.items() if name in chosen], "seeds": {}}
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        _, splits, _ = problems_from_config(DataConfig(kinds="all", num_problems=num_problems), seed)
        test = splits["test"][:test_size]
        trained = {}
        for name in chosen:
            overrides = LEARNERS[name]
            settings = {**base, **overrides}
            if overrides["agent"] != "reinforce":  # random search, knn, cluster: finalists for REINFORCE's pairs
                settings = equal_budget(settings, {**settings, "agent": "reinforce"})
            trained[name] = train_one(engine, splits, settings, seed, run_dir(out, name, seed), reuse)
            click.echo(f"seed {seed}, {name}: {trained[name]['summary']['oracle_pairs']} oracle pairs, "
                       f"validation {pct(trained[name]['summary']['best_val_accuracy'] or float('nan'))}, "
                       f"{trained[name]['wall_s']:.0f} s")
        systems = {name: item["prompts_of"](test) for name, item in trained.items()}
        for prompt in HAND_WRITTEN:
            systems[label(prompt)] = [prompt] * len(test)
        for name, prompt in few_shot_system(splits["train"], 2).items():
            systems[name] = [prompt] * len(test)
        report = compare_systems(engine, RewardMix(["correct"]), test, systems, decoding_from(RunConfig().oracle),
                                 learned=REFINER, progress=False)
        report.pop("_results")
        curves = {}
        for name in chosen:
            metrics = run_dir(out, name, seed) / "metrics.csv"
            import csv
            with open(metrics) as handle:
                rows = list(csv.DictReader(handle))
            curves[name] = [{k: r[k] for k in ("step", "val_accuracy", "entropy", "entropy_exemplars", "entropy_form",
                                                "entropy_words", "val_distinct_prompts") if r.get(k) not in (None, "")}
                            for r in rows]
        results["seeds"][seed] = {"n_test": len(test), "report": report, "curves": curves,
                                  "oracle_pairs": {n: t["summary"]["oracle_pairs"] for n, t in trained.items()},
                                  "val": {n: t["summary"]["best_val_accuracy"] for n, t in trained.items()},
                                  "train_wall_s": {n: t["wall_s"] for n, t in trained.items()}}
        (out / "contest.json").write_text(json.dumps(results, indent=2))
        click.echo(seed_table(seed, results["seeds"][seed]))
    results["wall_s"] = time.perf_counter() - started
    (out / "contest.json").write_text(json.dumps(results, indent=2))
    write_report(out, results)


def write_report(out: Path, results: dict) -> None:
    """contest.md (a summary over seeds, then each seed's tables) and contest.png (validation curves, the refiner's
    entropy per kind of slot and its distinct validation prompts, per seed)."""
    from rlprompt_math.evaluation import upgrade_report  # a contest.json from before `vs_learned` reads the same

    for entry in results["seeds"].values():
        entry["report"] = upgrade_report(entry["report"])
    summary = ["| seed | refiner | best one-for-all learner | refiner minus it (p) | "
               "refiner minus best hand-written (p) | refiner minus 2-shot (p) | "
               "refiner minus nearest neighbours (p) | refiner minus cluster-then-search (p) | kinds where the "
               "refiner is significantly worse than one-for-all (p < 0.05) | refiner's distinct test prompts | "
               "learners' oracle pairs |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, entry in results["seeds"].items():
        systems = entry["report"]["systems"]
        one_for_alls = [n for n in ONE_FOR_ALL if n in systems]  # a --learners subset may have trained none
        one_for_all = max(one_for_alls, key=lambda n: systems[n]["accuracy"]) if one_for_alls else None
        hand = max((label(p) for p in HAND_WRITTEN), key=lambda n: systems[n]["accuracy"])
        shot = next(n for n in systems if n.startswith("2-shot"))

        def versus(name):  # the refiner minus the system, and McNemar p; a learner not trained: absent
            if name not in systems:
                return "-"
            vs = systems[name]["vs_learned"]
            return f"{100 * (systems[REFINER]['accuracy'] - systems[name]['accuracy']):+.1f} ({vs['mcnemar_p']:.2g})"

        nearest = (versus(KNN) if KNN in systems else
                   f"{versus(UNTRAINED_POINTER)} untrained pointer" if UNTRAINED_POINTER in systems else "-")
        worse = [k for k, e in entry["report"].get("by_kind", {}).items()
                 for n in one_for_alls
                 if e["systems"][n]["vs_learned"]["accuracy_minus_learned"] > 0
                 and e["systems"][n]["vs_learned"]["mcnemar_p"] < 0.05]
        pairs = entry["oracle_pairs"]
        budget = (f"{next(iter(pairs.values()))} each" if len(set(pairs.values())) == 1 else
                  ", ".join(f"{next((s for s, n in SHORT.items() if n == name), name)} {v}"
                            for name, v in pairs.items()))
        best = f"{one_for_all}: {pct(systems[one_for_all]['accuracy'])}" if one_for_all else "-"
        summary.append(f"| {seed} | {pct(systems[REFINER]['accuracy'])} | {best} "
                       f"| {versus(one_for_all) if one_for_all else '-'} | {versus(hand)} | {versus(shot)} | "
                       f"{nearest} | {versus(CLUSTER)} | "
                       f"{', '.join(sorted(set(worse))) or 'none'} | {systems[REFINER]['distinct_prompts']} | "
                       f"{budget} |")
    text = "\n\n".join(seed_table(seed, entry) for seed, entry in results["seeds"].items())
    total = f" Total {results['wall_s'] / 60:.1f} min." if "wall_s" in results else ""
    (out / "contest.md").write_text(f"Machine: {results['machine']}.{total}\n\n" + "\n".join(summary) + f"\n\n{text}\n")
    _plot(out / "contest.png", results)
    click.echo((out / "contest.md").read_text())


def _plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(results["seeds"])
    fig, axes = plt.subplots(2, len(seeds), figsize=(4.5 * len(seeds), 7), squeeze=False)
    for column, seed in enumerate(seeds):
        curves = results["seeds"][seed]["curves"]
        top, bottom = axes[0][column], axes[1][column]
        for name, rows in curves.items():
            points = [(int(r["step"]) + 1, float(r["val_accuracy"])) for r in rows if "val_accuracy" in r]
            if points:
                top.plot(*zip(*points), marker="o", label=name)
        top.set_title(f"seed {seed}: validation accuracy (greedy)")
        top.set_xlabel("steps done")
        top.grid(alpha=0.3)
        rows = curves[REFINER]
        for key in ("entropy_exemplars", "entropy_form", "entropy_words"):
            points = [(int(r["step"]), float(r[key])) for r in rows if key in r]
            if points:
                bottom.plot(*zip(*points), label=key.replace("entropy_", "") + " (nats/slot)")
        distinct = [(int(r["step"]) + 1, float(r["val_distinct_prompts"])) for r in rows if "val_distinct_prompts" in r]
        if distinct:
            twin = bottom.twinx()
            twin.plot(*zip(*distinct), "k:", marker="s", label="distinct validation prompts")
            twin.set_ylabel("distinct prompts (100 validation questions)")
            twin.legend(loc="upper right", fontsize=7)
        bottom.set_title(f"seed {seed}: the refiner's entropy per slot")
        bottom.set_xlabel("step")
        bottom.legend(loc="lower left", fontsize=7)
        bottom.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def shown(name: str) -> str:
    """A system's name in the tables: an old file's retrieval row says it is the untrained pointer's."""
    return f"{name}, untrained pointer" if name == UNTRAINED_POINTER else name


def seed_table(seed, entry) -> str:
    report = entry["report"]
    lines = [f"### Seed {seed}: {entry['n_test']} test problems", "",
             "| system | accuracy | 95% CI | refiner minus it | McNemar p | distinct prompts | oracle pairs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in report["systems"].items():
        vs = s.get("vs_learned")
        diff = f"{100 * (report['systems'][REFINER]['accuracy'] - s['accuracy']):+.1f}" if vs else ""  # refiner minus it
        p = f"{vs['mcnemar_p']:.2g}" if vs else ""
        lines.append(f"| {shown(name)} | {pct(s['accuracy'])} | {pct(s['ci95'][0])}-{pct(s['ci95'][1])} | {diff} | {p} | "
                     f"{s['distinct_prompts']} | {entry['oracle_pairs'].get(name, '')} |")
    kinds = report.get("by_kind", {})
    if kinds:
        # every learner beside the refiner (and an old file's untrained-pointer row), then a person's best prompt
        others = [n for n in (*LEARNERS, UNTRAINED_POINTER) if n != REFINER] + [label("Give the answer as a single number.")]
        others = list(dict.fromkeys(o for o in others if o in report["systems"]))
        lines += ["", "| kind | n | refiner | " + " | ".join(f"{shown(o)} (p)" for o in others) + " | refiner prompts |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in others) + " | --- |"]
        for kind, k in kinds.items():
            cells = []
            for o in others:
                c = k["systems"][o]
                cells.append(f"{pct(c['accuracy'])} ({c['vs_learned']['mcnemar_p']:.2g})")
            lines.append(f"| {kind} | {k['n']} | {pct(k['systems'][REFINER]['accuracy'])} | " + " | ".join(cells)
                         + f" | {k['systems'][REFINER]['distinct_prompts']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
