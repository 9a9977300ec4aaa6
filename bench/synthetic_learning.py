"""Can the learner find a better prompt when there is one? REINFORCE on a simulated oracle.

    python bench/synthetic_learning.py                       # both landscapes, every learner, 5 seeds
    python bench/synthetic_learning.py --seeds 10 --steps 60

A real oracle call costs a quarter of a second on the development machine, so a learner's settings
cannot be compared on it with many seeds. Here the oracle is simulated with the shape measured by
`bench/headroom.py` on the real one: 8 slots over 107 actions; each question has its own difficulty
(most questions always or never solved, whatever the prompt); a prompt shifts every question's
log-odds by an additive part (a value per slot and token) plus a prompt-specific part that no
per-slot policy can represent. The reward of a pair is its 0/1 answer. A learner's result is the
*exact* accuracy of its greedy prompt on 400 held-out simulated questions (no evaluation noise).

Landscapes (`--landscape`):
  flat      between-prompt spread of the default task (true sd of random prompts' accuracy ~2 points)
  headroom  the same questions, with prompt effects large enough that the best prompt is far ahead

Learners: the library's own agents, driven through their training loop (`Agent.train`) on the
simulated oracle as on a real environment: REINFORCE with the default settings (Adam, lr 1.0), with
plain SGD (a gradient bandit: evidence adds up, noise averages out), and random search on the same
budget (agents/random_search.py: the best sampled prompt by mean training reward).
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
import torch

from common import machine_without_engine  # bench/ is on the path
from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null
from rlprompt_math.config import AlgorithmConfig
from rlprompt_math.data import Problem

SLOTS, ACTIONS = 8, 107


class Vocab:
    def __len__(self):
        return ACTIONS

    def decode(self, actions):
        return " ".join(map(str, actions))


class SimulatedOracle:
    """The env interface the agents use (problems, vocab, prompt_length, observe, score)."""

    def __init__(self, landscape: str, seed: int):
        rng = np.random.default_rng(seed)
        self.vocab, self.prompt_length = Vocab(), SLOTS
        # Question log-odds: bimodal like the real questions (most always or never solved).
        self.train_logit = rng.normal(-2.5, 3.0, 1600)
        self.test_logit = rng.normal(-2.5, 3.0, 400)
        scale = {"flat": 0.05, "headroom": 0.25}[landscape]
        self.slot_effect = rng.normal(0, scale, (SLOTS, ACTIONS))
        self.prompt_sd = 0.15  # the prompt-specific part, the same on both landscapes
        self.problems = [Problem(str(i), f"q{i}", "0") for i in range(len(self.train_logit))]
        self.rng = np.random.default_rng(seed + 1)
        self.seed = seed

    def _effect(self, actions) -> float:
        actions = tuple(int(a) for a in actions)
        specific = np.random.default_rng([self.seed, *actions]).normal(0, self.prompt_sd)
        return float(self.slot_effect[np.arange(SLOTS), list(actions)].sum() + specific)

    def accuracy(self, actions) -> float:
        """Exact held-out accuracy of one prompt."""
        return float(np.mean(1 / (1 + np.exp(-(self.test_logit + self._effect(actions))))))

    def observe(self, problems):
        return np.ones((len(problems), 4), np.float32)

    def score(self, problems, actions, prompts=None, batch_label=""):
        if actions is None:
            actions = [[int(x) for x in p.split()] for p in prompts]
        p = [1 / (1 + math.exp(-(self.train_logit[int(q.id)] + self._effect(a)))) for q, a in zip(problems, actions)]
        correct = self.rng.random(len(p)) < np.array(p)
        infos = [{"correct": bool(c), "prompt": self.vocab.decode(a)} for c, a in zip(correct, actions)]
        return correct.astype(float), infos


def run_reinforce(oracle, config: AlgorithmConfig) -> dict:
    """The REINFORCE agent's kept (greedy) prompt after `config.steps` steps of its training loop."""
    from rlprompt_math.agents import ReinforceAgent
    from rlprompt_math.policies import Unconditioned

    torch.manual_seed(config.seed)
    agent = ReinforceAgent(oracle, Unconditioned(SLOTS, ACTIONS), config)
    agent.train(progress=False)
    greedy = agent.prompt_policy().greedy(torch.zeros(1, 1))[0].tolist()
    return {"accuracy": oracle.accuracy(greedy), "entropy": agent.history[-1]["entropy"]}


def run_random_search(oracle, config: AlgorithmConfig) -> dict:
    """The random-search agent's kept prompt after `config.steps` rounds of K candidates on M questions."""
    from rlprompt_math.agents import RandomSearchAgent

    agent = RandomSearchAgent(oracle, config)
    agent.train(progress=False)
    return {"accuracy": oracle.accuracy(agent.prompt_policy().actions)}


def budget_sweep(landscapes, budgets, seeds, out) -> None:
    """Default REINFORCE and random search at each budget (steps), every seed: table and plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defaults = AlgorithmConfig()
    k, m = defaults.prompts_per_question, defaults.batch_size
    fig, axes = plt.subplots(1, len(landscapes), figsize=(5 * len(landscapes), 3.6), squeeze=False)
    results = {}
    for ax, landscape in zip(axes[0], landscapes):
        print(f"\n## landscape {landscape}: kept prompt's held-out accuracy (%), mean and 95% t-interval over "
              f"{seeds} seeds")
        print("| oracle pairs | REINFORCE (defaults) | random search | REINFORCE - random search (paired by seed) |")
        print("| --- | --- | --- | --- |")
        curves = {"REINFORCE (defaults)": [], "random search": []}
        for steps in budgets:
            configs = [AlgorithmConfig(steps=steps, seed=s) for s in range(seeds)]
            rl = np.array([run_reinforce(SimulatedOracle(landscape, c.seed), c)["accuracy"] for c in configs]) * 100
            rs = np.array([run_random_search(SimulatedOracle(landscape, c.seed), c)["accuracy"] for c in configs]) * 100
            cells = [_mean_interval(rl), _mean_interval(rs), _mean_interval(rl - rs)]
            print(f"| {steps * k * m} | " + " | ".join(f"{mu:.1f} [{lo:.1f}, {hi:.1f}]" for mu, lo, hi in cells) + " |")
            curves["REINFORCE (defaults)"].append(cells[0])
            curves["random search"].append(cells[1])
            results.setdefault(landscape, []).append({"pairs": steps * k * m, "reinforce": rl.tolist(),
                                                      "random_search": rs.tolist()})
        pairs = [b * k * m for b in budgets]
        for name, cells in curves.items():
            mu, lo, hi = (np.array(c) for c in zip(*cells))
            ax.plot(pairs, mu, marker="o", label=name)
            ax.fill_between(pairs, lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("simulated oracle pairs")
        ax.set_ylabel("held-out accuracy of the kept prompt (%)")
        ax.set_title(f"landscape: {landscape}")
        ax.legend()
    fig.tight_layout()
    if out:
        Path(out).with_suffix(".png").parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out).with_suffix(".png"), dpi=120)
        Path(out).write_text(dumps_json(results, indent=1))
        print(f"\nplot: {Path(out).with_suffix('.png')}")


# Student's t, 97.5% quantile, by degrees of freedom (scipy is not a dependency); 1.96 beyond 30.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def _mean_interval(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    if len(x) < 2:
        return float(x.mean()), float("nan"), float("nan")
    half = (_T975[len(x) - 2] if len(x) - 1 <= len(_T975) else 1.96) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


@click.command()
@click.option("--seeds", default=5, show_default=True)
@click.option("--steps", default=30, show_default=True, help="Steps of K prompts x M questions (the default run's).")
@click.option("--landscape", "landscapes", multiple=True, default=("flat", "headroom"), show_default=True)
@click.option("--budgets", default=None, help="Comma-separated step counts: instead of the learner table, "
              "default REINFORCE against random search at each budget (a table and, with --out, a plot).")
@click.option("--out", default=None, help="Write the per-seed results as JSON here.")
def main(seeds, steps, landscapes, budgets, out):
    torch.set_num_threads(1)
    if budgets:
        budget_sweep(landscapes, [int(b) for b in budgets.split(",")], seeds, out)
        return
    defaults = AlgorithmConfig()
    k, m = defaults.prompts_per_question, defaults.batch_size
    learners = {
        "REINFORCE, Adam lr 1.0 (default)": dict(optimizer="adam", lr=1.0),
        "REINFORCE, Adam lr 0.1": dict(optimizer="adam", lr=0.1),
        "REINFORCE, SGD lr 1": dict(optimizer="sgd", lr=1.0, max_grad_norm=1e9),
        "REINFORCE, SGD lr 3": dict(optimizer="sgd", lr=3.0, max_grad_norm=1e9),
        "REINFORCE, SGD lr 3, z-scored": dict(optimizer="sgd", lr=3.0, max_grad_norm=1e9, normalize_rewards=True),
    }
    results = {}
    for landscape in landscapes:
        rows = {}
        for seed in range(seeds):
            oracle = SimulatedOracle(landscape, seed)
            rng = np.random.default_rng(seed + 99)
            randoms = [oracle.accuracy(rng.integers(0, ACTIONS, SLOTS)) for _ in range(2000)]
            rows.setdefault("random prompt (mean; sd)", []).append({"accuracy": float(np.mean(randoms)),
                                                                    "sd": float(np.std(randoms))})
            best_additive = oracle.slot_effect.argmax(1)  # the best per-slot choice (what a policy can reach)
            rows.setdefault("best additive prompt", []).append({"accuracy": oracle.accuracy(best_additive)})
            for name, change in learners.items():
                config = AlgorithmConfig(steps=steps, seed=seed, **change)
                rows.setdefault(name, []).append(run_reinforce(SimulatedOracle(landscape, seed), config))
            rows.setdefault("random search, same budget", []).append(
                run_random_search(SimulatedOracle(landscape, seed), AlgorithmConfig(steps=steps, seed=seed)))
        results[landscape] = rows
        print(f"\n## landscape {landscape}: {seeds} seeds, {steps} steps x {k} prompts x {m} questions "
              f"= {steps * k * m} simulated oracle pairs")
        print("| learner | held-out accuracy of the kept prompt, mean ± sd | per seed | entropy at the end |")
        print("| --- | --- | --- | --- |")
        for name, runs in rows.items():
            acc = np.array([r["accuracy"] for r in runs]) * 100
            ent = [r["entropy"] for r in runs if "entropy" in r]
            extra = f" (random prompts' sd {np.mean([r['sd'] for r in runs]) * 100:.1f})" if "sd" in runs[0] else ""
            print(f"| {name}{extra} | {acc.mean():.1f} ± {acc.std():.1f} | {' / '.join(f'{a:.1f}' for a in acc)} | "
                  f"{np.mean(ent):.2f} |" if ent else f"| {name}{extra} | {acc.mean():.1f} ± {acc.std():.1f} | "
                  f"{' / '.join(f'{a:.1f}' for a in acc)} | |")
    print(f"\nmachine: {machine_without_engine()}")
    if out:
        Path(out).write_text(dumps_json(results, indent=1))


if __name__ == "__main__":
    main()
