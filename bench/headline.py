"""The headline result: learned prompts against hand-written ones on held-out problems, from scratch.

    python bench/headline.py                      # 3 seeds of the headline setting + hard sets
    python bench/headline.py --grid all           # ... then every comparison variant (seed 0)
    python bench/headline.py --grid random,refiner --grid-steps 12
    python bench/headline.py --routes all         # ... and every route beside REINFORCE, each seed
    python bench/headline.py --shots 2 --budgets 8,16   # structured prompts; REINFORCE vs random search
                                                        # at 8, 16 and --steps steps, every seed

One process, one model load. Problems come from the built-in generator: two-operand integer
arithmetic (difficulty 1-2) split by hash into train / validation / test; the test problems are
used for nothing but the final comparison. Each seed trains an unconditioned policy with REINFORCE
(paired design, leave-one-out baseline, entropy bonus, `finalists` validation at the end), then
its kept prompt and the hand-written prompts are scored on the same test problems (greedy, same
decoding), with exact McNemar tests against the best hand-written prompt. The learned prompts are
then scored on harder held-out kinds (two-step word problems, fractions, percentages).

`--routes` trains other routes on every seed, on the same splits and test problems: random search on
REINFORCE's oracle budget (the same steps, M and K, so the same oracle pairs) and the differentiable
routes (soft prompt, PEZ, Gumbel-softmax Refiner; `--route-steps` x `--route-batch-size` questions,
forward and backward passes through the LLM counted), each with the gold-answer loss or (`-own`)
the loss on the model's own correct completions. Every row gives its accuracy with a 95% bootstrap
interval, McNemar p against the best hand-written prompt and against the same seed's REINFORCE, and
its budget: oracle pairs, LLM forward/backward rows and wall time.

`--shots K` gives the learned prompts K exemplar slots (and answer forms); every system is also compared
with the few-shot reference (`--reference-shots`). `--budgets` trains REINFORCE and random search on every
seed at each budget on the same oracle pairs and plots held-out accuracy against pairs (budget_curves.png).

Every number of the README's Results section comes from this script. It writes, under --out:
results.md (the tables), results.json, routes_curves.png (with --routes: validation accuracy, loss
and entropy against step), and one run directory per training run (metrics.csv,
learning_curve.png, samples.jsonl, policies). Tables are rewritten after every finished item, so an
interrupted run still leaves what it measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

# bench/ is on the path
from common import HAND_WRITTEN, base_settings, equal_budget, label as _label, machine, pct as _pct, train_one as _train_one
from rlprompt_math.config import field_default

HARD_KINDS = ("word_two_step", "fractions", "percentages")
# The headline setting is the defaults (with the budgets of the options below); its label says which.
HEADLINE = (f"headline setting ({field_default('policy')}, {field_default('baseline')}, "
            f"entropy {field_default('entropy_coef'):g}, {field_default('action_vocab')}, "
            f"{' + '.join(field_default('rewards'))})")

# Comparison grid: overrides of the headline setting, each trained once (seed 0) on the grid budget.
VARIANTS = {
    HEADLINE: {},
    "random search": {"agent": "random"},
    "refiner (question-conditioned)": {"policy": "refiner", "finalists": 0},
    "autoregressive refiner": {"policy": "autoregressive", "finalists": 0},
    "baseline none": {"baseline": "none"},
    "baseline moving_average": {"baseline": "moving_average"},
    "baseline batch_mean": {"baseline": "batch_mean"},
    "baseline learned": {"baseline": "learned"},
    "no entropy bonus": {"entropy_coef": 0.0},
    "prompt length 2": {"prompt_length": 2},
    "prompt length 4": {"prompt_length": 4},
    "prompt length 8": {"prompt_length": 8},
    "vocabulary frequent:500": {"action_vocab": "frequent:500"},
    "reward correct only": {"rewards": ["correct"]},
    "reward correct + likelihood": {"rewards": ["correct", "likelihood:0.5"]},
    "no finalists (greedy prompt only)": {"finalists": 0},
}
GRID_KEYS = {"random": "random search", "refiner": "refiner (question-conditioned)",
             "autoregressive": "autoregressive refiner", "none": "baseline none",
             "moving_average": "baseline moving_average", "batch_mean": "baseline batch_mean",
             "learned": "baseline learned", "no_entropy": "no entropy bonus", "length2": "prompt length 2",
             "length4": "prompt length 4",
             "length8": "prompt length 8", "frequent": "vocabulary frequent:500", "correct": "reward correct only",
             "likelihood": "reward correct + likelihood", "no_finalists": "no finalists (greedy prompt only)",
             "headline": HEADLINE}
GRID_DIRS = {name: key for key, name in GRID_KEYS.items()}

# Routes trained beside REINFORCE on every seed (--routes): overrides of the headline setting. The
# differentiable ones also get --route-steps and --route-batch-size.
ROUTES = {
    # Its finalists make its oracle pairs REINFORCE's at the headline setting (common.equal_budget, in Headline.train_seeds).
    "random": ("random search (same oracle pairs)", {"agent": "random"}),
    "soft-prompt": ("soft prompt, gold-answer loss", {"agent": "soft-prompt"}),
    "soft-prompt-own": ("soft prompt, own-completion loss", {"agent": "soft-prompt", "loss_target": "own"}),
    "pez": ("PEZ, gold-answer loss", {"agent": "pez"}),
    "pez-own": ("PEZ, own-completion loss", {"agent": "pez", "loss_target": "own"}),
    "gumbel": ("Gumbel-softmax Refiner, gold-answer loss", {"agent": "gumbel", "policy": "refiner", "finalists": 0}),
    "gumbel-own": ("Gumbel-softmax Refiner, own-completion loss",
                   {"agent": "gumbel", "policy": "refiner", "finalists": 0, "loss_target": "own"}),
}


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True, help="Training seeds of the headline setting.")
@click.option("--steps", default=24, show_default=True, help="REINFORCE steps per seed.")
@click.option("--batch-size", default=16, show_default=True, help="Questions per step (M).")
@click.option("--prompts-per-question", default=8, show_default=True, help="Prompts per step (K).")
@click.option("--prompt-length", default=field_default("prompt_length"), show_default=True,
              help="Prompt slots of the headline setting.")
@click.option("--lr", default=field_default("lr"), show_default=True)
@click.option("--finalists", default=field_default("finalists"), show_default=True)
@click.option("--val-size", default=field_default("val_size"), show_default=True)
@click.option("--test-size", default=400, show_default=True)
@click.option("--hard-size", default=60, show_default=True, help="Problems per harder kind (0: skip).")
@click.option("--max-new-tokens", default=field_default("max_new_tokens"), show_default=True)
@click.option("--grid", default="", help="Comma-separated variants to compare (or 'all'): "
              + ", ".join(GRID_KEYS))
@click.option("--grid-steps", default=12, show_default=True, help="Steps per grid variant (same M, K).")
@click.option("--routes", default="", help="Comma-separated routes trained on every seed beside REINFORCE (or "
              "'all'): " + ", ".join(ROUTES))
@click.option("--route-steps", default=field_default("steps"), show_default=True,
              help="Steps of the differentiable routes.")
@click.option("--route-batch-size", default=field_default("batch_size"), show_default=True,
              help="Questions per step of the differentiable routes.")
@click.option("--shots", default=field_default("shots"), type=int,
              help="Exemplar slots of the learned prompts (0: instruction words only; default: the run's, 2 for "
                   "REINFORCE and random search, 0 for the gradient routes).")
@click.option("--reference-shots", default=field_default("reference_shots"), show_default=True,
              help="The few-shot reference every system is compared with: the first K training problems, answers "
                   "in the model's own form (0: none).")
@click.option("--budgets", default="", help="Comma-separated step budgets, e.g. 8,16: REINFORCE and random search "
              "on every seed at each budget (and at --steps) on the same oracle pairs; writes budget_curves.png.")
@click.option("--reuse", is_flag=True, help="Load, instead of training again, each run already finished under --out "
              "with the same settings (its train time is the one recorded then); the scoring is redone.")
@click.option("--out", default="runs/headline", show_default=True, type=click.Path(file_okay=False))
@click.option("--render-only", is_flag=True, help="Rewrite results.md from --out's results.json and exit.")
def main(seeds, steps, batch_size, prompts_per_question, prompt_length, lr, finalists, val_size, test_size, hard_size,
         max_new_tokens, grid, grid_steps, routes, route_steps, route_batch_size, shots, reference_shots, budgets, reuse,
         out, render_only):
    out = Path(out)
    if render_only:
        render_only_from(out)
        return
    seeds = [int(s) for s in seeds.split(",") if s.strip()]
    base = base_settings("policy", prompt_length=prompt_length, lr=lr, steps=steps, batch_size=batch_size,
                         prompts_per_question=prompts_per_question, finalists=finalists, val_size=val_size,
                         max_new_tokens=max_new_tokens, shots=shots)  # the headline setting: the defaults, these budgets
    bench = Headline(out, base, test_size, hard_size, reuse, {"steps": route_steps, "batch_size": route_batch_size},
                     grid_steps)
    route_keys = list(ROUTES) if routes == "all" else [r.strip() for r in routes.split(",") if r.strip()]
    unknown = set(route_keys) - set(ROUTES)
    if unknown:
        raise click.BadParameter(f"unknown routes {sorted(unknown)}; choose from {', '.join(ROUTES)}")
    bench.score_references(reference_shots)
    bench.train_seeds(seeds, route_keys, route_steps, route_batch_size)
    bench.budget_curves(seeds, sorted({int(b) for b in budgets.split(",") if b.strip()} | ({steps} if budgets else set())))
    bench.hard_sets()
    bench.grid(list(VARIANTS) if grid == "all" else [GRID_KEYS[g.strip()] for g in grid.split(",") if g.strip()],
               grid_steps)
    bench.write()
    click.echo((out / "results.md").read_text())


def render_only_from(out: Path) -> None:
    """--render-only: results.md and the plots again from --out's results.json."""
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(render(results))
    plot_routes(results, out)
    plot_budgets(results, out)
    click.echo((out / "results.md").read_text())


class Headline:
    """One headline run: the model and problems loaded once, the results so far (rewritten under `out` after every
    finished item), and one method per mode, in the order main() runs them."""

    def __init__(self, out: Path, base: dict, test_size: int, hard_size: int, reuse: bool, route_settings: dict,
                 grid_steps: int):
        from rlprompt_math.config import DataConfig
        from rlprompt_math.data import generate_problems, problems_from_config
        from rlprompt_math.engines.transformers import TransformersEngine
        from rlprompt_math.oracle import Decoding
        from rlprompt_math.rewards import RewardMix

        out.mkdir(parents=True, exist_ok=True)
        self.out, self.base, self.reuse = out, base, reuse
        self.started = time.perf_counter()
        self.engine = TransformersEngine.load()
        _, self.splits, _ = problems_from_config(DataConfig(num_problems=6000), 0)  # default kinds and levels
        self.test = self.splits["test"][:test_size]
        self.hard = {kind: generate_problems(hard_size, seed=1, kinds=[kind], difficulty=[1, 2])
                     for kind in HARD_KINDS} if hard_size else {}
        self.decoding = Decoding(base["max_new_tokens"])
        self.grader = RewardMix(["correct"])
        self.results = {"machine": machine(self.engine), "model": self.engine.name, "settings": base,
                        "n_test": len(self.test), "n_train": len(self.splits["train"]), "hand_written": {},
                        "seeds": [], "hard": {}, "grid": [], "grid_steps": grid_steps, "budgets": [], "routes": [],
                        "route_settings": route_settings}
        self.solved = np.zeros(len(self.test), bool)  # test questions that some system's prompt solved
        self.hand, self.best_hand, self.few_shot = {}, None, None
        self.trained = {}  # seed -> the headline setting's run on it

    def score(self, problems, prompts, name):
        from rlprompt_math.evaluation import score_system

        result = score_system(name, self.engine, self.grader, problems, prompts, self.decoding)
        if problems is self.test:
            self.solved[:] |= result.correct
            self.results["solved_by_any_system"] = float(self.solved.mean())
        return result

    def versus_best_hand(self, system) -> float:
        return _p_value(system, self.hand[self.best_hand])

    def write(self):
        from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null

        self.results["total_wall_s"] = time.perf_counter() - self.started
        (self.out / "results.json").write_text(dumps_json(self.results, indent=2, default=str))
        (self.out / "results.md").write_text(render(self.results))
        plot_routes(self.results, self.out)
        plot_budgets(self.results, self.out)

    def score_references(self, reference_shots: int):
        """The hand-written prompts and (`reference_shots` > 0) the few-shot reference on the test problems."""
        from rlprompt_math.exemplars import few_shot_reference, reference_name

        test, results = self.test, self.results
        click.echo(f"machine: {results['machine']}; train {len(self.splits['train'])}, test {len(test)} problems")
        for prompt in HAND_WRITTEN:
            self.hand[prompt] = self.score(test, [prompt] * len(test), _label(prompt))
            results["hand_written"][prompt] = float(self.hand[prompt].correct.mean())
            click.echo(f"hand-written {_label(prompt)}: {_pct(self.hand[prompt].correct.mean())}")
        self.best_hand = max(HAND_WRITTEN, key=lambda p: self.hand[p].correct.mean())
        results["best_hand_written"] = self.best_hand
        if reference_shots:  # compared with, but not a "hand-written instruction"
            name = reference_name(reference_shots)
            self.few_shot = self.score(test, [few_shot_reference(self.splits["train"], reference_shots)] * len(test),
                                       name)
            results["few_shot_reference"] = {"name": name, "accuracy": float(self.few_shot.correct.mean())}
            click.echo(f"{name}: {_pct(self.few_shot.correct.mean())}")
        self.write()

    def train_seeds(self, seeds: list[int], route_keys: list[str], route_steps: int, route_batch_size: int):
        """The headline setting on every seed, and after each, the routes in `route_keys` on the same seed."""
        test, base, results = self.test, self.base, self.results
        for seed in seeds:
            item = _train_one(self.engine, self.splits, base, seed, self.out / f"seed{seed}", self.reuse)
            prompts = item["prompts_of"](test)
            scored = self.score(test, prompts, f"seed {seed}")
            self.trained[seed] = item
            finals = item["summary"].get("finalists")
            results["seeds"].append({
                "seed": seed, "prompt": str(prompts[0]), "accuracy": float(scored.correct.mean()),
                "p_vs_best_hand_written": self.versus_best_hand(scored),
                "p_vs_no_prompt": _p_value(scored, self.hand[""]),
                "p_vs_few_shot": _p_value(scored, self.few_shot) if self.few_shot is not None else None,
                "val_accuracy": item["summary"]["best_val_accuracy"], "oracle_pairs": item["summary"]["oracle_pairs"],
                "train_wall_s": item["wall_s"], "chosen_from": "finalist" if finals and finals["chosen"].get("kept")
                else "greedy policy"})
            click.echo(f"seed {seed}: {str(prompts[0])!r} {_pct(scored.correct.mean())}")
            results["routes"].append(_route_row("REINFORCE", seed, item, prompts, scored, self.hand[self.best_hand],
                                                None))
            self.write()
            for key in route_keys:
                name, overrides = ROUTES[key]
                settings = {**base, **overrides}
                if overrides["agent"] == "random":  # REINFORCE's oracle pairs (its run on this seed, at `base`)
                    settings = equal_budget(settings, base)
                else:
                    settings.update(steps=route_steps, batch_size=route_batch_size)
                route = _train_one(self.engine, self.splits, settings, seed, self.out / f"{key}-s{seed}", self.reuse)
                route_prompts = route["prompts_of"](test)
                route_scored = self.score(test, route_prompts, f"{name}, seed {seed}")
                results["routes"].append(_route_row(name, seed, route, route_prompts, route_scored,
                                                    self.hand[self.best_hand], scored))
                click.echo(f"{name}, seed {seed}: {_pct(route_scored.correct.mean())}")
                self.write()

    def budget_curves(self, seeds: list[int], budget_steps: list[int]):
        """REINFORCE and random search on every seed at each step budget, on the same oracle pairs (the headline
        setting's own steps reuse its runs)."""
        for seed in seeds:
            for budget in budget_steps:
                settings = {**self.base, "steps": budget}
                reinforce = self.trained[seed] if budget == self.base["steps"] else _train_one(
                    self.engine, self.splits, settings, seed, self.out / f"budget{budget}-reinforce-s{seed}", self.reuse)
                # Random search validates only its finalists: as many as make its oracle pairs REINFORCE's.
                search = _train_one(self.engine, self.splits, equal_budget({**settings, "agent": "random"}, settings),
                                    seed, self.out / f"budget{budget}-random-s{seed}", self.reuse)
                scored = {}
                for agent, item in (("REINFORCE", reinforce), ("random search", search)):
                    scored[agent] = self.score(self.test, item["prompts_of"](self.test),
                                               f"{agent}, {budget} steps, seed {seed}")
                for agent, item in (("REINFORCE", reinforce), ("random search", search)):
                    other = scored["random search" if agent == "REINFORCE" else "REINFORCE"]
                    stats = scored[agent].summary()
                    self.results["budgets"].append({
                        "agent": agent, "seed": seed, "steps": budget, "prompt": str(scored[agent].prompts[0]),
                        "accuracy": stats["accuracy"], "ci95": stats["ci95"],
                        "oracle_pairs": item["summary"]["oracle_pairs"], "train_wall_s": item["wall_s"],
                        "p_vs_best_hand_written": self.versus_best_hand(scored[agent]),
                        "p_vs_other": _p_value(scored[agent], other)})
                click.echo(f"budget {budget} steps, seed {seed}: REINFORCE "
                           f"{_pct(scored['REINFORCE'].correct.mean())}, "
                           f"random search {_pct(scored['random search'].correct.mean())}")
                self.write()

    def hard_sets(self):
        """The hand-written prompts and every seed's learned prompts on the harder held-out kinds."""
        for kind, kind_problems in self.hard.items():
            row = {}
            for prompt in HAND_WRITTEN:
                scored = self.score(kind_problems, [prompt] * len(kind_problems), _label(prompt))
                row[_label(prompt)] = float(scored.correct.mean())
            for seed, item in self.trained.items():
                scored = self.score(kind_problems, item["prompts_of"](kind_problems), f"seed {seed}")
                row[f"seed {seed}"] = float(scored.correct.mean())
            self.results["hard"][kind] = {"n": len(kind_problems), "accuracy": row}
            self.write()

    def grid(self, names: list[str], grid_steps: int):
        """Each comparison variant in `names`, trained once (seed 0) for `grid_steps` steps."""
        for name in names:
            settings = {**self.base, **VARIANTS[name], "steps": grid_steps}
            item = _train_one(self.engine, self.splits, settings, 0, self.out / f"grid-{GRID_DIRS[name]}")
            prompts = item["prompts_of"](self.test)
            scored = self.score(self.test, prompts, name)
            self.results["grid"].append({"variant": name, "prompt": prompts[0] if len(set(prompts)) == 1
                                         else f"{len(set(prompts))} distinct prompts, e.g. {prompts[0]!r}",
                                         "accuracy": float(scored.correct.mean()),
                                         "p_vs_best_hand_written": self.versus_best_hand(scored),
                                         "oracle_pairs": item["summary"]["oracle_pairs"],
                                         "train_wall_s": item["wall_s"]})
            click.echo(f"{name}: {_pct(scored.correct.mean())}")
            self.write()


def _p_value(system, reference) -> float:
    """Exact McNemar p of two systems scored on the same problems (SystemResults)."""
    from rlprompt_math.evaluation import paired_comparison

    return paired_comparison(system.correct, reference.correct)["mcnemar_p"]


def _route_row(system, seed, item, prompts, scored, best_hand, reinforce) -> dict:
    """One trained system on one seed (its test `scored`, a SystemResult): accuracy with its interval,
    paired tests against the best hand-written prompt and REINFORCE on the same seed (`reinforce` None:
    the REINFORCE row itself), and what it cost."""
    from rlprompt_math.evaluation import paired_comparison

    summary, stats = item["summary"], scored.summary()
    shown = item["reading"] if str(prompts[0]).startswith("\u27e6soft-prompt") else str(prompts[0])
    if len(set(prompts)) > 1:
        shown = f"{len(set(prompts))} distinct prompts, e.g. {str(prompts[0])!r}"
    return {"system": system, "seed": seed, "prompt": shown, "accuracy": stats["accuracy"], "ci95": stats["ci95"],
            "p_vs_best_hand_written": paired_comparison(scored.correct, best_hand.correct)["mcnemar_p"],
            "p_vs_reinforce": (None if reinforce is None
                               else paired_comparison(scored.correct, reinforce.correct)["mcnemar_p"]),
            "oracle_pairs": summary["oracle_pairs"], "forward_passes": summary.get("forward_passes", 0),
            "backward_passes": summary.get("backward_passes", 0), "own_targets": summary.get("own_targets"),
            "val_accuracy": summary.get("best_val_accuracy"), "train_wall_s": item["wall_s"]}


def _run_dir(out: Path, system: str, seed: int) -> Path:
    if system == "REINFORCE":
        return out / f"seed{seed}"
    return out / f"{next(key for key, (name, _) in ROUTES.items() if name == system)}-s{seed}"


def plot_routes(r: dict, out: Path) -> Path | None:
    """routes_curves.png: validation accuracy against step for every system and seed (the kept prompt is the
    best of these), the differentiable routes' training loss, and REINFORCE's policy entropy."""
    import csv

    import matplotlib

    from rlprompt_math.checkpoint import METRICS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not r.get("routes"):
        return None
    fig, (val_ax, loss_ax, ent_ax) = plt.subplots(1, 3, figsize=(16, 4.6))
    colours = {}
    for row in r["routes"]:
        path = _run_dir(out, row["system"], row["seed"]) / METRICS
        if not path.exists():
            continue
        with open(path, newline="") as handle:
            metrics = list(csv.DictReader(handle))
        colour = colours.setdefault(row["system"], f"C{len(colours)}")
        label = row["system"] if row["seed"] == r["routes"][0]["seed"] else None
        val = [(int(m["step"]) + 1, 100 * float(m["val_accuracy"])) for m in metrics if m.get("val_accuracy")]
        if val:
            val_ax.plot(*zip(*val), marker="o", color=colour, alpha=0.8, label=label)
        loss = [(int(m["step"]) + 1, float(m["loss"])) for m in metrics if m.get("loss") and m.get("forward_passes")]
        if loss:
            loss_ax.plot(*zip(*loss), color=colour, alpha=0.8, label=label)
        entropy = [(int(m["step"]) + 1, float(m["entropy"])) for m in metrics if m.get("entropy")]
        if entropy:
            ent_ax.plot(*zip(*entropy), color=colour, alpha=0.8, label=f"seed {row['seed']}")
    best = r.get("best_hand_written")
    val_ax.axhline(100 * r["hand_written"][best], color="k", ls="--", lw=1, label="best hand-written (test)")
    val_ax.set(title=f"validation accuracy ({r['settings']['val_size']} questions)", xlabel="step", ylabel="%")
    loss_ax.set(title="differentiable routes: training loss (nats per target token)", xlabel="step")
    ent_ax.set(title="REINFORCE: policy entropy (nats per slot)", xlabel="step")
    val_ax.legend(fontsize=7)
    loss_ax.legend(fontsize=7)
    ent_ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "routes_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_budgets(r: dict, out: Path) -> Path | None:
    """budget_curves.png: held-out accuracy against the oracle pairs spent, REINFORCE and random search, every
    seed (points) and the mean over seeds (line), with the best hand-written prompt and the few-shot reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not r.get("budgets"):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for k, agent in enumerate(dict.fromkeys(row["agent"] for row in r["budgets"])):
        rows = [row for row in r["budgets"] if row["agent"] == agent]
        ax.scatter([row["oracle_pairs"] for row in rows], [100 * row["accuracy"] for row in rows], color=f"C{k}",
                   alpha=0.5, s=18)
        steps = sorted({row["steps"] for row in rows})
        means = [(np.mean([row["oracle_pairs"] for row in rows if row["steps"] == b]),
                  100 * np.mean([row["accuracy"] for row in rows if row["steps"] == b])) for b in steps]
        ax.plot(*zip(*means), marker="o", color=f"C{k}", label=f"{agent} (mean of {len(rows) // len(steps)} seeds)")
    best = r.get("best_hand_written")
    ax.axhline(100 * r["hand_written"][best], color="k", ls="--", lw=1, label=f"best hand-written {_label(best)}")
    if r.get("few_shot_reference"):
        ax.axhline(100 * r["few_shot_reference"]["accuracy"], color="grey", ls=":", lw=1,
                   label=r["few_shot_reference"]["name"])
    ax.set(xlabel="oracle pairs (training + validation)", ylabel=f"held-out accuracy, % ({r['n_test']} problems)",
           title="REINFORCE against random search at the same oracle budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "budget_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_budgets(r: dict) -> list[str]:
    lines = ["", "REINFORCE against random search at equal oracle budgets (the same steps x prompts x questions; "
             "random search validates as many finalists as REINFORCE's validations and finalists). p: exact "
             "McNemar against the other agent at the same budget and seed, and against the best hand-written prompt.",
             "", "| steps | seed | agent | kept prompt | held-out accuracy [95% CI] | p vs the other agent "
             "| p vs best hand-written | oracle pairs | train time |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(r["budgets"], key=lambda row: (row["steps"], row["seed"], row["agent"])):
        lo, hi = row["ci95"]
        lines.append(f"| {row['steps']} | {row['seed']} | {row['agent']} | {row['prompt']!r} | {_pct(row['accuracy'])} "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {row['p_vs_other']:.2g} | {row['p_vs_best_hand_written']:.2g} "
                     f"| {row['oracle_pairs']} | {row['train_wall_s']:.0f} s |")
    lines += ["", "| steps | REINFORCE, mean ± sd | random search, mean ± sd | REINFORCE ahead in seeds "
              "(at p < 0.05) |", "| --- | --- | --- | --- |"]
    for steps in sorted({row["steps"] for row in r["budgets"]}):
        acc = {agent: np.array([row["accuracy"] for row in r["budgets"] if row["steps"] == steps and row["agent"] == agent])
               for agent in ("REINFORCE", "random search")}
        ahead = [row for row in r["budgets"] if row["steps"] == steps and row["agent"] == "REINFORCE"]
        wins = sum(row["accuracy"] > other["accuracy"] for row in ahead for other in r["budgets"]
                   if other["agent"] == "random search" and other["steps"] == steps and other["seed"] == row["seed"])
        significant = sum(row["p_vs_other"] < 0.05 and row["accuracy"] > other["accuracy"] for row in ahead
                          for other in r["budgets"] if other["agent"] == "random search" and other["steps"] == steps
                          and other["seed"] == row["seed"])
        lines.append(f"| {steps} | " + " | ".join(
            f"{_pct(a.mean())} ± {100 * a.std(ddof=1) if len(a) > 1 else 0:.1f}" for a in acc.values())
            + f" | {wins} of {len(ahead)} ({significant}) |")
    return lines


def render_routes(r: dict) -> list[str]:
    """The routes table (every seed) and the mean over seeds per system."""
    rs = r["route_settings"]
    s = r["settings"]
    best = r.get("best_hand_written")
    lines = ["", f"Routes, every seed on the same test problems. REINFORCE and random search: {s['steps']} steps x "
             f"{s['prompts_per_question']} prompts x {s['batch_size']} questions; differentiable routes: "
             f"{rs['steps']} steps x {rs['batch_size']} questions, validated 3 times. p: exact McNemar against "
             f"{_label(best)} and against REINFORCE on the same seed. Oracle pairs are greedy decodes (training, "
             "validation, and for -own the target collection); LLM rows are teacher-forced forward / backward "
             "passes, one per question per step.", "",
             "| system | seed | kept prompt | held-out accuracy [95% CI] | p vs best hand-written | p vs REINFORCE "
             "| oracle pairs | LLM rows fwd / bwd | train time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["routes"]:
        lo, hi = row["ci95"]
        p_rf = "" if row["p_vs_reinforce"] is None else f"{row['p_vs_reinforce']:.2g}"
        lines.append(f"| {row['system']} | {row['seed']} | {row['prompt']!r} | {_pct(row['accuracy'])} "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {row['p_vs_best_hand_written']:.2g} | {p_rf} "
                     f"| {row['oracle_pairs']} | {row['forward_passes']} / {row['backward_passes']} "
                     f"| {row['train_wall_s']:.0f} s |")
    lines += ["", "| system | seeds | held-out accuracy, mean ± sd | vs best hand-written, mean points "
              "| seeds ahead / behind at p < 0.05 | train time, mean |", "| --- | --- | --- | --- | --- | --- |"]
    best_acc = r["hand_written"].get(best, float("nan"))
    for system in dict.fromkeys(row["system"] for row in r["routes"]):
        rows = [row for row in r["routes"] if row["system"] == system]
        accs = np.array([row["accuracy"] for row in rows])
        ahead = sum(row["p_vs_best_hand_written"] < 0.05 and row["accuracy"] > best_acc for row in rows)
        behind = sum(row["p_vs_best_hand_written"] < 0.05 and row["accuracy"] < best_acc for row in rows)
        sd = 100 * accs.std(ddof=1) if len(accs) > 1 else 0.0
        lines.append(f"| {system} | {len(rows)} | {_pct(accs.mean())} ± {sd:.1f} | "
                     f"{100 * (accs.mean() - best_acc):+.1f} | {ahead} / {behind} "
                     f"| {np.mean([row['train_wall_s'] for row in rows]):.0f} s |")
    return lines


def render(r: dict) -> str:
    s = r["settings"]
    lines = [f"Model {r['model']}; machine: {r['machine']}. Held-out test: {r['n_test']} two-operand integer "
             f"arithmetic problems (generator, difficulty 1-2), greedy, {s['max_new_tokens']} new tokens max, "
             f"answers ended at the first line break after a stated answer. Learned: {s['policy']} policy, "
             f"{s['prompt_length']} slots over `{s['action_vocab']}`, {s['shots'] if s.get('shots') is not None else 'the default number of'} exemplar slots, {s['baseline']} baseline, {s['steps']} steps x "
             f"{s['prompts_per_question']} prompts x {s['batch_size']} questions, {s['finalists']} finalists on "
             f"{s['val_size']} validation questions.", "",
             "| system | held-out accuracy | vs best hand-written (points; McNemar p) | oracle pairs (train + val) "
             "| train time |",
             "| --- | --- | --- | --- | --- |"]
    best = r.get("best_hand_written")
    best_acc = r["hand_written"].get(best, float("nan"))

    def versus(row):
        return f"{100 * (row['accuracy'] - best_acc):+.1f} (p = {row['p_vs_best_hand_written']:.2g})"

    for prompt, acc in r["hand_written"].items():
        lines.append(f"| hand-written {_label(prompt)}{' (best)' if prompt == best else ''} | {_pct(acc)} | | | |")
    if r.get("few_shot_reference"):
        few = r["few_shot_reference"]
        lines.append(f"| few-shot reference: {few['name']} | {_pct(few['accuracy'])} | "
                     f"{100 * (few['accuracy'] - best_acc):+.1f} | | |")
    for row in r["seeds"]:
        against_few = f"; vs few-shot p = {row['p_vs_few_shot']:.2g}" if row.get("p_vs_few_shot") is not None else ""
        lines.append(f"| learned, seed {row['seed']}: {row['prompt']!r} ({row['chosen_from']}) | {_pct(row['accuracy'])} "
                     f"| {versus(row)}{against_few} | {row['oracle_pairs']} | {row['train_wall_s']:.0f} s |")
    if r["seeds"]:
        accs = np.array([row["accuracy"] for row in r["seeds"]])
        lines.append(f"| **learned, mean ± sd over {len(accs)} seeds** | **{_pct(accs.mean())} ± "
                     f"{100 * accs.std(ddof=1) if len(accs) > 1 else 0:.1f}** | | | |")
    if r["hard"]:
        kinds = list(r["hard"])
        lines += ["", "Harder held-out kinds (difficulty 1-2; accuracy):", "",
                  "| system | " + " | ".join(f"{k} (n={r['hard'][k]['n']})" for k in kinds) + " |",
                  "| --- |" + " --- |" * len(kinds)]
        for system in r["hard"][kinds[0]]["accuracy"]:
            lines.append(f"| {system} | " + " | ".join(_pct(r["hard"][k]["accuracy"][system]) for k in kinds) + " |")
    if r["grid"]:
        steps = f"{r['grid_steps']} steps" if "grid_steps" in r else "--grid-steps steps"
        lines += ["", f"Comparison grid (seed 0, each variant {steps} of the same size; train time excludes "
                  "pairs answered from the engine's greedy cache, e.g. the steps a variant shares with the seed-0 run):",
                  "",
                  "| variant | kept prompt | held-out accuracy | vs best hand-written (points; McNemar p) "
                  "| oracle pairs | train time |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in r["grid"]:
            lines.append(f"| {row['variant']} | {row['prompt']!r} | {_pct(row['accuracy'])} | {versus(row)} "
                         f"| {row['oracle_pairs']} | {row['train_wall_s']:.0f} s |")
    if r.get("budgets"):
        lines += render_budgets(r)
    if r.get("routes"):
        lines += render_routes(r)
    if "solved_by_any_system" in r:
        lines += ["", f"Headroom: {_pct(r['solved_by_any_system'])} of the test problems are solved by at least "
                  "one of the prompts above (each system is one prompt per question, greedy), an upper bound "
                  "for choosing among them per question."]
    lines += ["", f"Total wall time: {r.get('total_wall_s', 0) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
