"""REINFORCE's settings against random search on structured prompts, judged on a development set, not on test.

    python bench/learner_variants.py --variants default,random,correct,lr3 --seeds 0,1

The headline split (6,000 generator problems, split seed 0). Each variant trains on the training split at one
budget (`--steps` x 8 prompts x 8 questions, `--shots` exemplar slots), keeps its prompt on the first
`--val-size` validation questions as `bench/headline.py` does, and is scored on the *next* `--dev-size`
validation questions: disjoint from what it kept on and from the test split, which this script never reads,
so settings can be chosen here without tuning to the test problems. Prints one line per run (appended to
--out/results.jsonl with per-question correctness) and McNemar's p against random search on the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from common import base_settings, equal_budget, halving_steps_settings, learner_settings, train_one as _train_one
from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null

# A variant: settings over the base REINFORCE run's, or a function of them (where the pairs must come out equal).
VARIANTS = {
    "default": {},
    "lr0.3": {"lr": 0.3},
    "lr3": {"lr": 3.0},
    "correct": {"rewards": ["correct"]},
    "correct-lr3": {"rewards": ["correct"], "lr": 3.0},
    "zscore": {"normalize_rewards": True},
    "one-word": {"prompt_length": 1},
    "epochs4": {"update_epochs": 4},  # each batch of rewards used for 4 updates (PPO's clipped ratio)
    "finalists": {"eval_every": 0, "finalists": 3},  # validate the final greedy and 3 measured samples: same pairs
    "epochs4-finalists": {"update_epochs": 4, "eval_every": 0, "finalists": 3},
    # the last third of the steps measures the greedy and best samples by successive halving; survivors the finalists
    "halving-steps": lambda base: halving_steps_settings(base, max(1, base["steps"] // 3)),
    "halving-half": lambda base: halving_steps_settings(base, max(1, base["steps"] // 2)),
    "epochs4-halving-steps": lambda base: halving_steps_settings({**base, "update_epochs": 4},
                                                                 max(1, base["steps"] // 3)),
    # the same pairs a step, each prompt measured on more questions (TPE measures each trial on 35)
    "halving-steps-b16k4": lambda base: halving_steps_settings({**base, "batch_size": 16, "prompts_per_question": 4},
                                                               max(1, base["steps"] // 3)),
    "halving-steps-b32k2": lambda base: halving_steps_settings({**base, "batch_size": 32, "prompts_per_question": 2},
                                                               max(1, base["steps"] // 3)),
    "random": {"agent": "random"},
    "halving": {"agent": "halving"},
    "tpe": lambda base: learner_settings("tpe", base),  # MIPROv2's schedule at the base run's pairs
    "random-one-word": {"agent": "random", "prompt_length": 1},
}


@click.command()
@click.option("--variants", default="default,random", show_default=True, help=", ".join(VARIANTS))
@click.option("--seeds", default="0", show_default=True)
@click.option("--steps", default=16, show_default=True)
@click.option("--shots", default=2, show_default=True)
@click.option("--val-size", default=48, show_default=True)
@click.option("--dev-size", default=400, show_default=True)
@click.option("--out", default="runs/learner-variants", show_default=True, type=click.Path(file_okay=False))
def main(variants, seeds, steps, shots, val_size, dev_size, out):
    from rlprompt_math.config import DataConfig
    from rlprompt_math.data import problems_from_config
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.evaluation import paired_comparison, score_system
    from rlprompt_math.oracle import Decoding
    from rlprompt_math.rewards import RewardMix

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise click.BadParameter(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engine = TransformersEngine.load()
    _, splits, _ = problems_from_config(DataConfig(num_problems=6000), 0)
    dev = splits["validation"][val_size:val_size + dev_size]
    base = base_settings("policy", "prompt_length", "max_new_tokens", steps=steps, batch_size=8, prompts_per_question=8,
                         finalists=0, val_size=val_size, shots=shots)
    click.echo(f"dev: validation[{val_size}:{val_size + len(dev)}], {len(dev)} questions; dtype {engine.dtype}")
    results = {}
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        for name in names:
            variant = VARIANTS[name]
            settings = variant(base) if callable(variant) else {**base, **variant}
            if settings["agent"] not in ("reinforce", "tpe"):  # finalists for REINFORCE's pairs (TPE's are set above)
                settings = equal_budget(settings, {**base, "agent": "reinforce"})
            start = time.perf_counter()
            item = _train_one(engine, splits, settings, seed, out / f"{name}-s{seed}")
            prompts = item["prompts_of"](dev)
            correct = score_system(name, engine, RewardMix(["correct"]), dev, prompts,
                                   Decoding(settings["max_new_tokens"])).correct
            results[name, seed] = correct
            row = {"variant": name, "seed": seed, "prompt": str(prompts[0]), "dev_accuracy": float(correct.mean()),
                   "val_accuracy": item["summary"]["best_val_accuracy"], "oracle_pairs": item["summary"]["oracle_pairs"],
                   "train_wall_s": item["wall_s"], "wall_s": time.perf_counter() - start,
                   "correct": correct.astype(int).tolist()}
            with (out / "results.jsonl").open("a") as handle:
                handle.write(dumps_json(row) + "\n")
            click.echo(f"seed {seed} {name}: dev {100 * correct.mean():.1f}%, {row['oracle_pairs']} pairs, "
                       f"{row['prompt']!r}")
    for (name, seed), correct in results.items():
        reference = results.get(("random" if "one-word" not in name else "random-one-word", seed))
        if reference is not None and reference is not correct:
            click.echo(f"seed {seed} {name} vs random search: {100 * (correct.mean() - reference.mean()):+.1f} points, "
                       f"p = {paired_comparison(correct, reference)['mcnemar_p']:.2g}")


if __name__ == "__main__":
    main()
