"""The default run, as a user runs it, on several seeds; its kept prompt scored on fresh held-out problems.

    python bench/default_runs.py --seeds 0,1,2                       # trains, then scores on 400 fresh problems
    python bench/default_runs.py --seeds 0,1,2 --reuse               # score runs already in --out again
    python bench/default_runs.py --seeds 0 --train-args "--shots 0"  # any run.py flags on top of the defaults

Each seed is `python run.py --agent reinforce --seed S` (plus `--train-args`) in its own process, timed, with
its peak memory (maximum resident set size, read by the child itself). The run's own final comparison uses its
test split (about 200 problems with the default 2,000); here the kept prompt is scored again on `--heldout`
*fresh* problems: drawn from the same generator settings with another seed, keeping only questions that are in
none of the run's splits (train, validation, test; so none is an exemplar either). On them: the kept prompt
against every hand-written reference and the few-shot reference (the first K training problems in the model's
own form), accuracy with 95% bootstrap intervals and exact McNemar p-values (`evaluation.evaluate_run`), and the
run's validation curve (the untrained policy first). Prints a markdown table; writes --out/results.json.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from common import machine_without_engine  # bench/ is on the path; run.py runs offline too

ROOT = Path(__file__).resolve().parent.parent
# Runs run.py in this process and writes its peak resident set size (KiB on Linux) where the caller asks.
_MEASURED = ("import resource, runpy, sys, atexit\n"
             "out = sys.argv.pop(1)\n"
             "atexit.register(lambda: open(out, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
             "sys.argv[0] = sys.argv[1]; del sys.argv[1]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def fresh_problems(config, seed: int, n: int):
    """`n` problems from the run's generator settings under another seed, none of whose questions is in the run."""
    import dataclasses

    from rlprompt_math.data import problems_from_config

    _, splits, _ = problems_from_config(config.data, config.seed)
    seen = {" ".join(p.question.split()).lower() for split in splits.values() for p in split}
    data = dataclasses.replace(config.data, num_problems=max(4 * n, int(config.data.num_problems)))
    candidates, _, _ = problems_from_config(data, 1_000_003 + seed)
    fresh = [p for p in candidates if " ".join(p.question.split()).lower() not in seen]
    if len(fresh) < n:
        raise click.ClickException(f"only {len(fresh)} fresh problems outside the run's splits; ask for fewer")
    return fresh[:n]


def train_one(seed: int, out: Path, train_args: list[str]) -> dict:
    """The default run for `seed` in its own process: wall time and peak memory."""
    name = f"default-s{seed}"
    rss_file = out / f"{name}.maxrss"
    command = [sys.executable, "-c", _MEASURED, str(rss_file), str(ROOT / "run.py"), "--agent", "reinforce",
               "--seed", str(seed), "--name", name, "--output-dir", str(out), "--quiet", *train_args]
    click.echo("$ " + " ".join(shlex.quote(c) for c in ["python", "run.py", *command[5:]]))
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return {"wall_s": time.perf_counter() - start, "peak_rss_gib": int(rss_file.read_text()) / 2**20}


def curve(run: Path) -> list[tuple[int, float]]:
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        return [(int(r["step"]), float(r["val_accuracy"])) for r in csv.DictReader(handle) if r.get("val_accuracy")]


@click.command()
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--heldout", default=400, show_default=True, help="Fresh held-out problems per seed.")
@click.option("--train-args", default="", help="More run.py flags for every seed, e.g. \"--shots 0\".")
@click.option("--out", default="runs/default-runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--reuse", is_flag=True, help="Score runs already in --out (their timing from the last results.json).")
@click.option("--report-only", is_flag=True, help="Print the table and draw the curves from --out/results.json only.")
def main(seeds, heldout, train_args, out, reuse, report_only):
    from rlprompt_math.config import saved_config
    from rlprompt_math.evaluation import evaluate_run
    from rlprompt_math.checkpoint import dumps_json  # strict JSON: NaN and infinities as null
    from rlprompt_math.runlog import RunDir

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if report_only:
        results = json.loads(results_path.read_text())
        click.echo(render(results) + f"\ncurves: {plot_curves(results, out / 'validation_curves.png')}")
        return
    previous = {r["seed"]: r for r in json.loads(results_path.read_text())["runs"]} if results_path.exists() else {}
    results = {"machine": machine_without_engine(), "train_args": train_args, "heldout": heldout, "runs": []}
    engine = None
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        run = out / f"default-s{seed}"
        timing = previous.get(seed, {}).get("timing") if reuse and (run / "summary.json").exists() else None
        if timing is None:
            timing = train_one(seed, out, shlex.split(train_args))
        config = saved_config(RunDir(run).read_config())
        if engine is None:
            from rlprompt_math.engines import load_engine

            engine = load_engine(config.engine)
        problems = fresh_problems(config, seed, heldout)
        report = evaluate_run(run, problems=problems, limit=None, config=config, engine=engine,
                              output=out / f"default-s{seed}-heldout", log=lambda *_: None)
        systems = {name: {k: v for k, v in s.items() if k in ("accuracy", "ci95", "vs_learned", "n")}
                   for name, s in report["systems"].items()}
        summary = json.loads((run / "summary.json").read_text())
        results["runs"].append({"seed": seed, "timing": timing, "dtype": str(engine.dtype).removeprefix("torch."),
                                "prompt": report["systems"]["learned policy"]["prompts"][0]["prompt"],  # most used
                                "systems": systems, "curve": curve(run), "oracle_pairs": summary["oracle_pairs"]})
        results_path.write_text(dumps_json(results, indent=2, default=str))
        click.echo(f"seed {seed}: {systems['learned policy']['accuracy']:.1%}")
    click.echo(render(results) + f"\ncurves: {plot_curves(results, out / 'validation_curves.png')}")


def plot_curves(results: dict, path: Path) -> Path:
    """Each seed's validation accuracy of the greedy prompt against the step (-1: the untrained policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in results["runs"]:
        steps, values = zip(*r["curve"])
        ax.plot(steps, [100 * v for v in values], "o-", label=f"seed {r['seed']}")
    ax.set_xlabel("step (-1: the untrained policy, its empty prompt)")
    ax.set_ylabel("validation accuracy, greedy prompt (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("The default run: validation accuracy over training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(results: dict) -> str:
    from rlprompt_math.evaluation import upgrade_report  # a results.json from before `vs_learned` reads the same

    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Machine: {results['machine']}; run.py flags beyond `--agent reinforce --seed S`: "
             f"`{results['train_args'] or '(none)'}`; {results['heldout']} fresh held-out problems per seed.", ""]
    for r in results["runs"]:
        systems = upgrade_report(r)["systems"]
        learned = systems["learned policy"]
        curve_text = " -> ".join(f"{pct(v)} ({'untrained' if s < 0 else f'step {s}'})" for s, v in r["curve"])
        timing = r["timing"]
        lines += [f"Seed {r['seed']} ({r['dtype']}): kept prompt `{r['prompt']}`; {timing['wall_s'] / 60:.1f} min, "
                  f"peak memory {timing['peak_rss_gib']:.2f} GiB, {r['oracle_pairs']} oracle pairs; validation "
                  f"{curve_text}.", "",
                  "| system | accuracy [95% CI] | learned minus it (points) | McNemar p |", "| --- | --- | --- | --- |",
                  f"| learned | {pct(learned['accuracy'])} [{pct(learned['ci95'][0])}, {pct(learned['ci95'][1])}] | | |"]
        for name, s in systems.items():
            if name == "learned policy":
                continue
            p = s["vs_learned"]["mcnemar_p"]
            lines.append(f"| {name} | {pct(s['accuracy'])} [{pct(s['ci95'][0])}, {pct(s['ci95'][1])}] | "
                         f"{100 * (learned['accuracy'] - s['accuracy']):+.1f} | {p:.2g} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
