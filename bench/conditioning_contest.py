"""The Refiner (a prompt per question) against one prompt for all, on mixed problems, at equal oracle pairs.

    python bench/conditioning_contest.py --seeds 0,1,2                  # the default run's settings, every kind
    python bench/conditioning_contest.py --seeds 0 --steps 10 --test-size 100 --out runs/contest-smoke

Issue 33's first goal. Per seed, on the generator's every kind (`--kinds all`), three learners train with the
default run's settings (30 steps x 8 questions x 8 prompts, 100 validation questions every 10 steps, 2 exemplar
slots over a 32-problem pool, answer form, 8 instruction slots, answer_likelihood) through the one wiring:
  * REINFORCE with the Refiner (question features -> a prompt per question; its exemplar slots a pointer head
    started at nearest-neighbour retrieval);
  * REINFORCE with one prompt for all (unconditioned);
  * random search, validating as many finalists as REINFORCE validates greedy prompts (the same pairs).
Then, on the seed's test problems, every learned system beside the hand-written prompts, the 2-shot reference
and nearest-neighbour retrieval (each question's 2 most similar pool problems, with the answer form and words
random search kept: the conditioned baseline that needs no RL), paired against the Refiner: accuracy with 95%
bootstrap intervals, McNemar p, and the same per kind (`evaluation.by_kind`), with the distinct prompts each wrote.
Written to --out/contest.json and --out/contest.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from common import HAND_WRITTEN, equal_budget, label, machine, pct, train_one  # noqa: E402  (bench/ is on the path)

REFINER = "REINFORCE, refiner (a prompt per question)"
LEARNERS = {REFINER: {"agent": "reinforce", "policy": "refiner"},
            "REINFORCE, one prompt for all": {"agent": "reinforce", "policy": "unconditioned"},
            "random search, one prompt for all": {"agent": "random", "policy": "unconditioned"}}
KNN = "nearest-neighbour exemplars (+ random search's form and words)"


def nearest_neighbour_prompts(refiner, space, search_policy, obs: torch.Tensor) -> list:
    """Each question's 2 most similar pool problems (the refiner's untrained pointer: cosine on centred features),
    in the answer form and with the instruction of random search's kept prompt."""
    from rlprompt_math.templates import Prompt, as_prompt

    kept = as_prompt(search_policy.prompt)
    form = space.form(search_policy.actions) if search_policy.actions is not None else "spaced"
    nearest = refiner.similarity(obs).topk(2, dim=-1).indices.tolist()
    return [Prompt(kept.instruction, tuple(space.pool.exemplar(i, form) for i in row)) for row in nearest]


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--steps", default=30, show_default=True)
@click.option("--num-problems", default=4000, show_default=True, help="generated problems per seed (before the split)")
@click.option("--test-size", default=400, show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--reuse", is_flag=True, help="load each run already finished under --out with the same settings")
@click.option("--report-only", is_flag=True, help="write contest.md and contest.png again from --out/contest.json")
@click.option("--out", default="runs/conditioning-contest", show_default=True, type=click.Path(file_okay=False))
def main(seeds, steps, num_problems, test_size, dtype, reuse, report_only, out):
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
    results = {"machine": machine(engine), "model": engine.name, "settings": base, "seeds": {}}
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        _, splits, _ = problems_from_config(DataConfig(kinds="all", num_problems=num_problems), seed)
        test = splits["test"][:test_size]
        trained = {}
        for name, overrides in LEARNERS.items():
            settings = {**base, **overrides}
            if overrides["agent"] == "random":  # its finalists: REINFORCE's oracle pairs at the same settings
                settings = equal_budget(settings, {**settings, "agent": "reinforce"})
            run_dir = out / f"{overrides['agent']}-{overrides['policy']}-s{seed}"
            trained[name] = train_one(engine, splits, settings, seed, run_dir, reuse)
            click.echo(f"seed {seed}, {name}: {trained[name]['summary']['oracle_pairs']} oracle pairs, "
                       f"validation {pct(trained[name]['summary']['best_val_accuracy'] or float('nan'))}, "
                       f"{trained[name]['wall_s']:.0f} s")
        systems = {name: item["prompts_of"](test) for name, item in trained.items()}
        refiner = trained[REFINER]
        obs = engine.question_features([p.question for p in test])
        systems[KNN] = nearest_neighbour_prompts(refiner["policy"], refiner["vocab"],
                                                 trained["random search, one prompt for all"]["policy"], obs)
        for prompt in HAND_WRITTEN:
            systems[label(prompt)] = [prompt] * len(test)
        for name, prompt in few_shot_system(splits["train"], 2).items():
            systems[name] = [prompt] * len(test)
        report = compare_systems(engine, RewardMix(["correct"]), test, systems, decoding_from(RunConfig().oracle),
                                 learned=REFINER, progress=False)
        report.pop("_results")
        curves = {}
        for name, overrides in LEARNERS.items():
            metrics = out / f"{overrides['agent']}-{overrides['policy']}-s{seed}" / "metrics.csv"
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
               "refiner minus nearest neighbours (p) | kinds where the refiner is significantly "
               "worse than one-for-all (p < 0.05) | refiner's distinct test prompts |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, entry in results["seeds"].items():
        systems = entry["report"]["systems"]
        one_for_all = max((n for n in LEARNERS if n != REFINER), key=lambda n: systems[n]["accuracy"])
        hand = max((label(p) for p in HAND_WRITTEN), key=lambda n: systems[n]["accuracy"])
        shot = next(n for n in systems if n.startswith("2-shot"))

        def versus(name):  # the refiner minus the system, and McNemar p
            vs = systems[name]["vs_learned"]
            return f"{100 * (systems[REFINER]['accuracy'] - systems[name]['accuracy']):+.1f} ({vs['mcnemar_p']:.2g})"

        worse = [k for k, e in entry["report"].get("by_kind", {}).items()
                 for n in LEARNERS if n != REFINER
                 if e["systems"][n]["vs_learned"]["accuracy_minus_learned"] > 0
                 and e["systems"][n]["vs_learned"]["mcnemar_p"] < 0.05]
        summary.append(f"| {seed} | {pct(systems[REFINER]['accuracy'])} | "
                       f"{one_for_all}: {pct(systems[one_for_all]['accuracy'])} "
                       f"| {versus(one_for_all)} | {versus(hand)} | {versus(shot)} | {versus(KNN)} | "
                       f"{', '.join(sorted(set(worse))) or 'none'} | {systems[REFINER]['distinct_prompts']} |")
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


def seed_table(seed, entry) -> str:
    report = entry["report"]
    lines = [f"### Seed {seed}: {entry['n_test']} test problems", "",
             "| system | accuracy | 95% CI | refiner minus it | McNemar p | distinct prompts | oracle pairs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in report["systems"].items():
        vs = s.get("vs_learned")
        diff = f"{100 * (report['systems'][REFINER]['accuracy'] - s['accuracy']):+.1f}" if vs else ""  # refiner minus it
        p = f"{vs['mcnemar_p']:.2g}" if vs else ""
        lines.append(f"| {name} | {pct(s['accuracy'])} | {pct(s['ci95'][0])}-{pct(s['ci95'][1])} | {diff} | {p} | "
                     f"{s['distinct_prompts']} | {entry['oracle_pairs'].get(name, '')} |")
    kinds = report.get("by_kind", {})
    if kinds:
        others = [n for n in report["systems"] if n != REFINER][:3] + [label("Give the answer as a single number.")]
        others = list(dict.fromkeys(o for o in others if o in report["systems"]))
        lines += ["", "| kind | n | refiner | " + " | ".join(f"{o} (p)" for o in others) + " | refiner prompts |",
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
