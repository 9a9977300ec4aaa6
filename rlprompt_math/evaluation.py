"""Scoring saved policies against the hand-written reference prompts on the same held-out problems.

The references are the hand-written instruction prompts (`config.REFERENCE_PROMPTS`) and the few-shot
prompt a person writes in a minute (`exemplars.few_shot_reference`: the first K training problems with
answers in the model's own form, `RunConfig.reference_shots`). A prompt is text or a structured
`templates.Prompt`: tables and the per-question CSV show its label (`str(prompt)`), report.json also
its exemplars and instruction (`Prompt.to_dict`).

Every system (the policy's greedy prompts, each reference prompt) is scored by the same oracle path
(`oracle.score_pairs`) with the same decoding on the same problems, so the comparison is paired:
  * accuracy with a 95% percentile-bootstrap interval (2,000 resamples of the problems, seeded);
  * McNemar's exact test of the learned policy against each reference prompt (two-sided binomial test
    on the discordant pairs; identical systems give p = 1);
  * mean partial credit, the rate at which an answer could be extracted, mean completion length
    in tokens, oracle rows and wall time, and the most common prompts.

In report.json, `learned` names the learned policy's system, and every other system's `vs_learned` is its
paired comparison with it (`paired_comparison`: `accuracy_minus_learned`, `mcnemar_p`, ...); "reference"
means only the hand-written prompts. `upgrade_report` reads a report written before these names.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import NO_PROMPT, REFERENCE_PROMPTS, ConfigError, RunConfig, prompt_label
from .data import Problem
from .exemplars import few_shot_reference, reference_name
from .oracle import Decoding, decoding_from, score_pairs
from .policies import policy_prompts
from .rewards import RewardMix
from .templates import Prompt, PromptLike

__all__ = ["NO_PROMPT", "bootstrap_ci", "by_kind", "compare_systems", "evaluate_run", "few_shot_system", "format_table",
           "mcnemar_p", "paired_comparison", "reference_systems", "run_prompts", "run_train_problems",
           "score_system", "upgrade_report", "write_report"]


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95):
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    return (float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2)))


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test: binomial(n = discordant pairs, p = 1/2)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def paired_comparison(system: Sequence[bool], learned: Sequence[bool]) -> dict:
    """A system against the learned policy on the same problems (per-problem correctness of each): the
    accuracy difference (this system minus the learned policy: positive where the system does better),
    McNemar's exact p, and the problems only one of them solved. The `vs_learned` entry of
    `compare_systems`; bench scripts read its (symmetric) p for other pairs too."""
    system, learned = np.asarray(system, bool), np.asarray(learned, bool)
    if system.shape != learned.shape:
        raise ValueError(f"paired comparison of {system.shape} and {learned.shape} results: not the same problems")
    return {"accuracy_minus_learned": float(system.mean() - learned.mean()),
            "mcnemar_p": mcnemar_p(learned, system),
            "learned_only_correct": int((learned & ~system).sum()),
            "this_only_correct": int((~learned & system).sum())}


def upgrade_report(report: dict) -> dict:
    """A report (report.json, or a bench file holding reports or their `systems`) with the keys of before the
    rename read as today's: `reference` (the learned policy's name) -> `learned`; each `vs_reference` ->
    `vs_learned`, its `accuracy_difference` (learned minus system) -> `accuracy_minus_learned` (system minus
    learned) and `reference_only_correct` -> `learned_only_correct`. A current report comes back as it is."""
    def comparison(old: dict) -> dict:
        renamed = {"accuracy_difference": "accuracy_minus_learned", "reference_only_correct": "learned_only_correct"}
        return {renamed.get(k, k): (0.0 - v if k == "accuracy_difference" else v) for k, v in old.items()}

    def system(entry: dict) -> dict:
        return {("vs_learned" if k == "vs_reference" else k): (comparison(v) if k == "vs_reference" else v)
                for k, v in entry.items()}

    out = {("learned" if k == "reference" else k): v for k, v in report.items()}
    if "systems" in out:
        out["systems"] = {name: system(entry) for name, entry in out["systems"].items()}
    if "by_kind" in out:
        out["by_kind"] = {kind: {**entry, "systems": {n: system(c) for n, c in entry["systems"].items()}}
                          for kind, entry in out["by_kind"].items()}
    return out


@dataclass
class SystemResult:
    name: str
    prompts: list[PromptLike]
    infos: list[dict]
    wall_s: float
    oracle_rows: int
    completion_tokens: list[int] = field(default_factory=list)

    @property
    def correct(self) -> np.ndarray:
        return np.array([bool(i["correct"]) for i in self.infos])

    def summary(self) -> dict:
        c = self.correct
        lo, hi = bootstrap_ci(c)
        return {"name": self.name, "n": len(c), "accuracy": float(c.mean()), "ci95": [lo, hi],
                "mean_credit": float(np.mean([i["credit"] for i in self.infos])),
                "extraction_rate": float(np.mean([i["extracted"] is not None for i in self.infos])),
                "mean_completion_tokens": float(np.mean(self.completion_tokens)) if self.completion_tokens else None,
                "oracle_rows": self.oracle_rows, "wall_s": self.wall_s,
                "prompts": [_prompt_entry(p, n) for p, n in Counter(self.prompts).most_common(5)]}


def _prompt_entry(prompt: PromptLike, count: int) -> dict:
    """A prompt in report.json: its label, and for a structured prompt its exemplars and instruction."""
    entry = {"prompt": str(prompt), "count": count}
    if isinstance(prompt, Prompt):
        entry["structured"] = prompt.to_dict()
    return entry


def score_system(name: str, engine, reward_mix: RewardMix, problems: Sequence[Problem], prompts: Sequence[PromptLike],
                 decoding: Decoding) -> SystemResult:
    rows_before = engine.stats.generated_rows
    start = time.perf_counter()
    _, infos = score_pairs(engine, reward_mix, problems, prompts, decoding, batch_label=f"evaluation of {name}")
    wall = time.perf_counter() - start
    lengths = [len(engine.tokenizer(i["completion"], add_special_tokens=False)["input_ids"]) for i in infos]
    return SystemResult(name, list(prompts), infos, wall, engine.stats.generated_rows - rows_before, lengths)


def run_prompts(run_dir: str | Path, questions: Sequence[str], *, checkpoint: str = "best", engine=None,
                log=print) -> list[dict]:
    """The prompt a saved run's policy writes for each new question (`run.py prompt`): a question-conditioned
    policy writes one per question, from its model's features (loaded in the dtype and on the device the run
    recorded, unless `engine` is given). Each entry: {"question", "prompt" (its label), "instruction",
    "exemplars", "messages" (the chat turns to send, question included)}."""
    from .checkpoint import POLICY_FILES, load_policy
    from .config import saved_config
    from .engines import load_engine, pin_engine_settings
    from .runlog import RunDir
    from .templates import as_prompt, chat_content_template

    config = saved_config(RunDir(Path(run_dir)).read_config())
    if engine is None:
        log(f"model: {pin_engine_settings(config.engine, given='as the run recorded')}")
        engine = load_engine(config.engine)
    policy, space, _ = load_policy(Path(run_dir) / POLICY_FILES[checkpoint], engine)
    if policy.kind == "soft":
        from .checkpoint import CheckpointError

        raise CheckpointError(f"{run_dir} holds a soft prompt (embeddings, not text): it has no prompt to print")
    problems = [Problem(f"question-{i}", question, "") for i, question in enumerate(questions)]
    content = chat_content_template(config.engine.template)
    out = []
    for question, prompt in zip(questions, policy_prompts(policy, space, problems, engine)):
        structured = as_prompt(prompt)
        out.append({"question": question, "prompt": prompt_label(prompt), **structured.to_dict(),
                    "messages": structured.messages(question, content)})
    return out


def compare_systems(engine, reward_mix: RewardMix, problems: Sequence[Problem], systems: dict[str, list[PromptLike]],
                    decoding: Decoding, *, learned: str | None = None, progress: bool = True) -> dict:
    """Score each system's prompts; paired tests of `learned` (the learned policy's system; default: the first)
    against the rest (each one's `vs_learned`)."""
    from tqdm.auto import tqdm

    results = {}
    for name, prompts in tqdm(systems.items(), desc="evaluating", disable=not progress, unit="system"):
        results[name] = score_system(name, engine, reward_mix, problems, prompts, decoding)
    learned = learned or next(iter(systems))
    base = results[learned].correct
    report = {"model": engine.name, "n_problems": len(problems), "learned": learned,
              "decoding": decoding.__dict__, "rewards": reward_mix.describe(), "systems": {}}
    for name, result in results.items():
        summary = result.summary()
        summary["distinct_prompts"] = len(set(map(str, result.prompts)))
        if name != learned:
            summary["vs_learned"] = paired_comparison(result.correct, base)
        report["systems"][name] = summary
    kinds = by_kind(problems, results, learned)
    if kinds:
        report["by_kind"] = kinds
    report["_results"] = results
    return report


def by_kind(problems: Sequence[Problem], results: dict[str, "SystemResult"], learned: str) -> dict:
    """Per problem kind (`Problem.kind`; {} unless the problems name at least two): each system's accuracy with
    its interval, the distinct prompts it wrote for that kind, and the system `learned` against it (its
    `vs_learned`: McNemar p) on that kind's questions alone."""
    kinds = [p.kind for p in problems]
    if None in kinds or len(set(kinds)) < 2:
        return {}
    table = {}
    for kind in sorted(set(kinds)):
        rows = np.array([k == kind for k in kinds])
        base = results[learned].correct[rows]
        entry = {"n": int(rows.sum()), "systems": {}}
        for name, result in results.items():
            correct = result.correct[rows]
            cell = {"accuracy": float(correct.mean()), "ci95": list(bootstrap_ci(correct)),
                    "distinct_prompts": len({str(q) for q, r in zip(result.prompts, rows) if r})}
            if name != learned:
                cell["vs_learned"] = paired_comparison(correct, base)
            entry["systems"][name] = cell
        table[kind] = entry
    return table


def write_report(report: dict, problems: Sequence[Problem], out_dir: str | Path) -> dict[str, Path]:
    from .checkpoint import dumps_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, SystemResult] = report["_results"]
    clean = {k: v for k, v in report.items() if k != "_results"}
    paths = {"report": out / "report.json", "per_question": out / "per_question.csv", "chart": out / "accuracy.png"}
    paths["report"].write_text(dumps_json(clean, indent=2))
    with open(paths["per_question"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["problem_id", "question", "gold", "system", "prompt", "completion", "extracted",
                         "correct", "credit"])
        for name, result in results.items():
            for problem, prompt, info in zip(problems, result.prompts, result.infos):
                writer.writerow([problem.id, problem.question, problem.answer, name, str(prompt), info["completion"],
                                 info["extracted"], int(info["correct"]), f"{info['credit']:.4f}"])
    _bar_chart(clean, paths["chart"])
    return paths


def _bar_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["systems"])
    acc = [report["systems"][n]["accuracy"] for n in names]
    lo = [a - report["systems"][n]["ci95"][0] for n, a in zip(names, acc)]
    hi = [report["systems"][n]["ci95"][1] - a for n, a in zip(names, acc)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    ax.bar(range(len(names)), acc, yerr=[lo, hi], capsize=4,
           color=["tab:blue" if n == report["learned"] else "tab:gray" for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n if len(n) < 28 else n[:25] + "..." for n in names], rotation=20, ha="right")
    ax.set_ylabel(f"accuracy (n={report['n_problems']}, 95% bootstrap CI)")
    ax.set_title(f"{report['model']}: held-out accuracy")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(report: dict) -> str:
    # Names up to 52 characters in full (the few-shot reference's), longer ones cut.
    width = min(52, max([38, *map(len, report["systems"])]))
    lines = [f"{'system':{width}s} {'accuracy':>9s} {'95% CI':>15s} {'credit':>7s} {'extracted':>9s} {'p vs learned':>12s}"
             f" {'prompts':>7s}"]
    for name, s in report["systems"].items():
        p = s.get("vs_learned", {}).get("mcnemar_p")
        lines.append(f"{(name[:width - 2] + '..') if len(name) > width else name:{width}s} {s['accuracy']:9.1%} "
                     f"[{s['ci95'][0]:5.1%}, {s['ci95'][1]:5.1%}] {s['mean_credit']:7.3f} "
                     f"{s['extraction_rate']:9.1%} {'' if p is None else f'{p:12.3g}':>12s} {s.get('distinct_prompts', ''):>7}")
    if report.get("by_kind"):
        lines += ["", format_kind_table(report)]
    return "\n".join(lines)


def format_kind_table(report: dict) -> str:
    """Accuracy per kind (rows) and system (columns; the learned policy first), with the learned policy's
    McNemar p against each other system in brackets and the distinct prompts it wrote for the kind."""
    names = list(report["systems"])
    short = ["learned" if n == report["learned"] else (n[:14] + "..") if len(n) > 16 else n for n in names]
    lines = [f"{'kind':20s} {'n':>4s} " + " ".join(f"{s:>16s}" for s in short) + "  learned prompts"]
    for kind, entry in report["by_kind"].items():
        cells = []
        for name in names:
            cell = entry["systems"][name]
            p = cell.get("vs_learned", {}).get("mcnemar_p")
            cells.append(f"{cell['accuracy']:6.1%}" + (f" (p {p:.2g})" if p is not None else "").ljust(10))
        lines.append(f"{kind[:20]:20s} {entry['n']:4d} " + " ".join(f"{c:>16s}" for c in cells)
                     + f"  {entry['systems'][report['learned']]['distinct_prompts']:>15d}")
    return "\n".join(lines)


def reference_systems(learned: Sequence[PromptLike], reference_prompts: Sequence[PromptLike] = REFERENCE_PROMPTS,
                      named: dict[str, PromptLike] | None = None) -> dict:
    """The systems of a comparison: the learned policy's prompts, then each reference prompt (named by
    its label), then the `named` references (e.g. the few-shot reference under `exemplars.reference_name`)."""
    systems = {"learned policy": list(learned)}
    for prompt in dict.fromkeys(reference_prompts):
        systems[prompt_label(prompt)] = [prompt] * len(learned)
    for name, prompt in (named or {}).items():
        systems[name] = [prompt] * len(learned)
    return systems


def few_shot_system(train_problems: Sequence[Problem], shots: int, form: str = "spaced") -> dict[str, Prompt]:
    """{name: prompt} of the few-shot reference (`exemplars.few_shot_reference`), or {} for 0 shots."""
    if shots == 0:
        return {}
    if shots < 0 or shots > len(train_problems):
        raise ConfigError(f"--reference-shots {shots}: the run has {len(train_problems)} training problems")
    return {reference_name(shots, form): few_shot_reference(train_problems, shots, form)}


def run_train_problems(run_dir: Path, config: RunConfig) -> list[Problem]:
    """The run's training split, as its settings give it, checked against the run's split manifest
    (splits.json) where it has one: the few-shot reference must show the problems the run trained on."""
    from .checkpoint import SPLIT_MANIFEST, CheckpointError
    from .data import problems_from_config

    _, splits, _ = problems_from_config(config.data, config.seed)
    train = splits["train"]
    manifest = Path(run_dir) / SPLIT_MANIFEST
    if manifest.exists():
        recorded = json.loads(manifest.read_text())["splits"]["train"]
        if [p.id for p in train] != recorded:
            raise CheckpointError(f"{manifest}: the run's training problems are not what its data settings give now "
                                  "(the dataset changed?); the few-shot reference cannot show them")
    return train


def evaluate_run(run_dir: str | Path, *, checkpoint: str = "best", problems: Sequence[Problem] | None = None,
                 split: str = "test", limit: int | None = RunConfig.test_size,
                 reference_prompts: Sequence[PromptLike] = REFERENCE_PROMPTS, reference_shots: int | None = None,
                 model: str | None = None, max_new_tokens: int | None = None, output: str | Path | None = None,
                 progress: bool = True, log=print, config: RunConfig | None = None, engine=None,
                 train_problems: Sequence[Problem] | None = None, dtype: str | None = None,
                 device: str | None = None) -> dict:
    """Evaluate a saved run's policy against the reference prompts (the Python form of `run.py evaluate`,
    and training's final comparison).

    `reference_shots` (default: the run's `reference_shots`; 0: none) adds the few-shot reference: the
    first K of `train_problems` (default: the run's training split) with answers in the model's own (spaced) form.

    `problems` defaults to the run's own `split`. `model` scores the prompts on another model: prompt
    text is re-tokenised for it; a question-conditioned policy still writes its prompts from the
    features of the model it was trained for, so both models are loaded. `config` (default: the run's
    config.yaml) and `engine` (default: loaded from it, in the dtype and on the device the run recorded, or
    `dtype` and `device` where given) may be passed when they are at hand. The report directory is checked
    for writing before anything is scored.
    """
    from .checkpoint import POLICY_FILES, load_policy
    from .config import saved_config
    from .data import problems_from_config
    from .engines import load_engine, pin_engine_settings
    from .runlog import RunDir

    from .runlog import unwritable_reason

    run_dir = Path(run_dir)
    if config is None:
        config = saved_config(RunDir(run_dir).read_config())
    # The run's recorded dtype and device (engines.pin_engine_settings), unless asked otherwise: the same model
    # numbers as in training. An older run that recorded `auto` decides again.
    if dtype or device:
        config.engine = dataclasses.replace(config.engine, dtype=dtype or config.engine.dtype,
                                            device=device or config.engine.device)
        config.engine.validate()
    out = Path(output) if output else run_dir / (f"eval-{split}" + (f"-{Path(model).name}" if model else ""))
    reason = unwritable_reason(out)  # before any scoring: a finished evaluation must not be lost
    if reason:
        raise ConfigError(f"cannot write the report to {out}: {reason} (choose a writable --output-dir); "
                          "nothing was scored")
    if problems is None:
        _, splits, _ = problems_from_config(config.data, config.seed)
        problems = splits[split]
    problems = list(problems)[:limit]
    if engine is None:
        log(f"dtype: {pin_engine_settings(config.engine, given='as the run recorded')}")
    train_engine = engine if engine is not None else load_engine(config.engine)
    policy, space, _ = load_policy(run_dir / POLICY_FILES[checkpoint], train_engine)
    target = train_engine
    if model and policy.kind == "soft":
        from .checkpoint import CheckpointError

        raise CheckpointError(f"{run_dir} holds a soft prompt: embeddings in {train_engine.name}'s input space, which "
                              "do not transfer to another model (PEZ and the other agents write text prompts)")
    if model:
        # Another model is loaded in this process (a served model is another server: another run config).
        target = load_engine(dataclasses.replace(config.engine, engine="transformers", base_url=(), model=model))
        if policy.uses_observation:
            log(f"note: the {policy.kind} policy writes its prompts from {train_engine.name}'s features; "
                f"they are scored on {target.name}.")
    shots = config.reference_shots if reference_shots is None else reference_shots
    if shots and train_problems is None:
        train_problems = run_train_problems(run_dir, config)
    systems = reference_systems(policy_prompts(policy, space, problems, train_engine), reference_prompts,
                                few_shot_system(list(train_problems or ()), shots))
    decoding = decoding_from(config.oracle, max_new_tokens)
    report = compare_systems(target, RewardMix(list(config.oracle.rewards), engine=target), problems, systems, decoding,
                             progress=progress)
    if policy.kind == "soft":  # its prompt "text" is a marker; say what it is closest to
        report["systems"]["learned policy"]["soft_prompt_reading"] = policy.reading()
        log(f"soft prompt {systems['learned policy'][0]}: nearest tokens {policy.reading()!r}")
    try:
        report["_paths"] = write_report(report, problems, out)
    except OSError as error:  # the scores are done: show them rather than lose them
        log(format_table(report))
        raise ConfigError(f"the report could not be written to {out}: {error.strerror or error}; the table above "
                          "is the result") from error
    return report
