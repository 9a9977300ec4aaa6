"""Exemplars chosen per question (the Refiner) against one exemplar set for all, per problem kind.

    python bench/conditioning.py                         # seed 0, the five kinds below
    python bench/conditioning.py --seeds 0,1 --steps 24 --per-kind 100

Issue 22's third goal: where question kinds differ (arithmetic, fractions, percentages, one-step word
problems, linear equations), a policy that reads the question (the seed's Refiner: the frozen LLM's
features of the question -> MLP -> a head per slot) can show each question exemplars of its own kind,
which one prompt for all cannot. Both are trained by REINFORCE on the same budget (steps x questions x
prompts, the same validation), and random search spends the same oracle pairs, with `--shots` exemplar slots over one pool drawn from the training split
(so about pool/kinds exemplars of each kind), the answer forms and `--prompt-length` instruction slots.

Scored on `--per-kind` test problems of each kind (greedy, the same decoding for every system) beside the
hand-written reference prompts and the few-shot reference (the first K training problems). Printed and
written to --out/results.md: accuracy per kind and overall for every system, the Refiner minus the
unconditioned policy and minus random search per kind with McNemar's exact p, and how often the Refiner's exemplars are of the
question's own kind (against the pool's share of that kind: what choosing by kind would look like).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

# bench/ is on the path
from common import HAND_WRITTEN, base_settings, equal_budget, label as _label, machine, pct as _pct, train_one as _train_one

KINDS = ("arithmetic", "fractions", "percentages", "word_one_step", "linear_equation")
# The systems trained on each seed (overrides of the shared settings), all on the same oracle budget: random
# search validates as many finalists as make its pairs REINFORCE's at the same settings (common.equal_budget).
SYSTEMS = {"one exemplar set for all (unconditioned)": {"policy": "unconditioned"},
           "exemplars per question (refiner)": {"policy": "refiner"},
           "random search (one set for all)": {"policy": "unconditioned", "agent": "random"}}


@click.command()
@click.option("--seeds", default="0", show_default=True)
@click.option("--kinds", default=",".join(KINDS), show_default=True, help="generator kinds, comma-separated")
@click.option("--steps", default=16, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--prompts-per-question", default=8, show_default=True)
@click.option("--shots", default=2, show_default=True)
@click.option("--prompt-length", default=4, show_default=True)
@click.option("--val-size", default=60, show_default=True)
@click.option("--per-kind", default=80, show_default=True, help="test problems of each kind")
@click.option("--max-new-tokens", default=48, show_default=True)
@click.option("--reference-shots", default=2, show_default=True)
@click.option("--reuse", is_flag=True, help="load each run already finished under --out with the same settings")
@click.option("--out", default="runs/conditioning", show_default=True, type=click.Path(file_okay=False))
def main(seeds, kinds, steps, batch_size, prompts_per_question, shots, prompt_length, val_size, per_kind,
         max_new_tokens, reference_shots, reuse, out):
    from rlprompt_math.config import DataConfig
    from rlprompt_math.data import problems_from_config
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.evaluation import paired_comparison, score_system
    from rlprompt_math.exemplars import few_shot_reference, reference_name
    from rlprompt_math.oracle import Decoding
    from rlprompt_math.rewards import RewardMix
    from rlprompt_math.templates import Prompt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    engine = TransformersEngine.load()
    _, splits, _ = problems_from_config(DataConfig(kinds=",".join(kinds), num_problems=1500 * len(kinds)), 0)
    kind_of = {p.question: p.extra["kind"] for part in splits.values() for p in part}
    test = [p for kind in kinds for p in [q for q in splits["test"] if q.extra["kind"] == kind][:per_kind]]
    test_kinds = np.array([p.extra["kind"] for p in test])
    decoding = Decoding(max_new_tokens)
    grader = RewardMix(["correct"])
    base = base_settings("network_lr", kinds=",".join(kinds), num_problems=1500 * len(kinds), steps=steps,
                         batch_size=batch_size, prompts_per_question=prompts_per_question, shots=shots,
                         prompt_length=prompt_length, val_size=val_size, max_new_tokens=max_new_tokens, finalists=0)
    click.echo(f"machine: {machine(engine)}; train {len(splits['train'])}, test {len(test)} ({per_kind} per kind)")

    systems: dict[str, np.ndarray] = {}
    for prompt in HAND_WRITTEN:
        systems[_label(prompt)] = score_system(_label(prompt), engine, grader, test, [prompt] * len(test),
                                               decoding).correct
    best_hand = max((_label(p) for p in HAND_WRITTEN), key=lambda name: systems[name].mean())
    if reference_shots:
        name = reference_name(reference_shots)
        systems[name] = score_system(name, engine, grader, test, [few_shot_reference(splits["train"], reference_shots)]
                                     * len(test), decoding).correct
    learned, own_kind = {}, {}
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        for label, overrides in SYSTEMS.items():
            policy = overrides["policy"] if overrides.get("agent") != "random" else "random"
            settings = {**base, **overrides}
            if policy == "random":
                settings = equal_budget(settings, {**settings, "agent": "reinforce"})
            item = _train_one(engine, splits, settings, seed, out / f"{policy}-s{seed}", reuse)
            prompts = item["prompts_of"](test)
            name = f"{label}, seed {seed}"
            systems[name] = score_system(name, engine, grader, test, prompts, decoding).correct
            learned[name] = {"policy": policy, "seed": seed, "distinct_prompts": len({str(p) for p in prompts}),
                             "example": str(prompts[0]), "oracle_pairs": item["summary"]["oracle_pairs"],
                             "train_wall_s": item["wall_s"], "val_accuracy": item["summary"]["best_val_accuracy"]}
            shown = [[kind_of.get(e.question) for e in p.exemplars] if isinstance(p, Prompt) else [] for p in prompts]
            own_kind[name] = {kind: float(np.mean([k == kind for row, q_kind in zip(shown, test_kinds)
                                                   if q_kind == kind for k in row] or [np.nan]))
                              for kind in kinds}
            click.echo(f"{name}: {_pct(systems[name].mean())} ({learned[name]['distinct_prompts']} distinct prompts)")
    pool_share = {}
    pool_file = next(out.glob("*/exemplars.json"), None)
    if pool_file is not None:
        pool_kinds = Counter(p["extra"]["kind"] for p in json.loads(pool_file.read_text())["problems"])
        pool_share = {k: pool_kinds[k] / sum(pool_kinds.values()) for k in kinds}

    results = {"machine": machine(engine), "model": engine.name, "settings": base, "kinds": kinds, "per_kind": per_kind,
               "n_per_kind": {k: int((test_kinds == k).sum()) for k in kinds}, "best_hand_written": best_hand, "learned": learned, "own_kind": own_kind, "pool_share": pool_share,
               "accuracy": {name: {**{k: float(c[test_kinds == k].mean()) for k in kinds}, "all": float(c.mean())}
                            for name, c in systems.items()},
               "refiner_vs_unconditioned": {}, "refiner_vs_random": {}, "total_wall_s": None}
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        a, b, c = (systems[f"{label}, seed {seed}"] for label in SYSTEMS)  # unconditioned, refiner, random
        for key, other in (("refiner_vs_unconditioned", a), ("refiner_vs_random", c)):
            results[key][seed] = {
                kind: {"points": 100 * float(b[m].mean() - other[m].mean()),
                       "p": paired_comparison(b[m], other[m])["mcnemar_p"]}
                for kind, m in [*((k, test_kinds == k) for k in kinds), ("all", np.ones(len(test), bool))]}
    results["total_wall_s"] = time.perf_counter() - started
    from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null

    (out / "results.json").write_text(dumps_json(results, indent=2))
    (out / "results.md").write_text(render(results))
    click.echo((out / "results.md").read_text())


def render(r: dict) -> str:
    kinds = r["kinds"]
    s = r["settings"]
    counts = ", ".join(f"{k} {n}" for k, n in r["n_per_kind"].items())
    lines = [f"Model {r['model']}; machine: {r['machine']}. Test problems per kind (at most {r['per_kind']}): {counts}; greedy, "
             f"{s['max_new_tokens']} new tokens. Learned: REINFORCE, {s['shots']} exemplar slots, "
             f"{s['prompt_length']} instruction slots, {s['steps']} steps x {s['prompts_per_question']} prompts x "
             f"{s['batch_size']} questions, {s['val_size']} validation questions; best hand-written overall: "
             f"{r['best_hand_written']}.", "",
             "| system | " + " | ".join(kinds) + " | all |", "| --- |" + " --- |" * (len(kinds) + 1)]
    for name, acc in r["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(acc[k]) for k in kinds) + f" | {_pct(acc['all'])} |")
    for key, title in (("refiner_vs_unconditioned", "Refiner minus unconditioned REINFORCE"),
                       ("refiner_vs_random", "Refiner minus random search")):
        lines += ["", f"{title}, points (McNemar p):", "",
                  "| seed | " + " | ".join(kinds) + " | all |", "| --- |" + " --- |" * (len(kinds) + 1)]
        for seed, row in r[key].items():
            lines.append(f"| {seed} | " + " | ".join(f"{row[k]['points']:+.1f} ({row[k]['p']:.2g})"
                                                     for k in [*kinds, "all"]) + " |")
    lines += ["", "Share of the exemplars shown that are of the question's own kind (the pool's share of that kind "
              "in the last row):", "", "| system | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for name, share in r["own_kind"].items():
        lines.append(f"| {name} | " + " | ".join("-" if v != v else f"{v:.0%}" for v in share.values()) + " |")
    if r["pool_share"]:
        lines.append("| pool | " + " | ".join(f"{r['pool_share'][k]:.0%}" for k in kinds) + " |")
    lines += ["", "| learned | distinct prompts on the test problems | e.g. | oracle pairs | validation | train time |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, item in r["learned"].items():
        lines.append(f"| {name} | {item['distinct_prompts']} | {item['example']!r} | {item['oracle_pairs']} | "
                     f"{_pct(item['val_accuracy'])} | {item['train_wall_s']:.0f} s |")
    lines.append(f"\nTotal wall time: {r['total_wall_s'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
