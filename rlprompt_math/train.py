"""The one wiring: a `RunConfig` -> engine, problems, environment, policy, agent, run directory, evaluation.

The command line (`run.py train`), `bench/headline.py` and Python users all go through here:

    from rlprompt_math.config import RunConfig
    from rlprompt_math.train import build, train

    result = train(RunConfig.from_flat({"steps": 20, "agent": "random"}))
    result.summary["best_val_accuracy"], result.report["systems"]["learned policy"]["accuracy"]

    built = build(config)          # everything wired, nothing trained: built.env, built.agent, ...

Like `cli.py`, this module is a composition root: the only library modules that import
`rlprompt_math.envs` and `rlprompt_math.agents`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import FINAL_EVAL, SPLITS, STATE_LAST, SUMMARY, CheckpointError, load_state
from .config import GRADIENT_AGENTS, ConfigError, RunConfig, saved_config
from .data import DataError, Problem, problems_from_config, write_split_manifest
from .engines import Engine, EngineError, load_engine
from .engines.transformers.loading import ModelLoadError
from .oracle import decoding_from
from .rewards import RewardError, RewardMix
from .runlog import RunDir
from .vocab import ActionVocab, VocabError


class TrainError(RuntimeError):
    """The run cannot start as asked (a run directory in the way, nothing to resume)."""


# What a user can get wrong: the command line turns these into one-line messages.
USER_ERRORS = (TrainError, ConfigError, DataError, ModelLoadError, RewardError, VocabError, CheckpointError,
               EngineError)


@dataclass
class Built:
    """Everything a run needs, wired from one config (see `build`)."""

    config: RunConfig
    engine: Engine
    splits: dict[str, list[Problem]]
    env: object
    agent: object
    run: RunDir
    val_problems: list[Problem]
    test_problems: list[Problem]
    initial_prompt: str | None = None
    resume_step: int | None = None


@dataclass
class TrainResult:
    built: Built
    summary: dict
    report: dict | None = field(default=None)

    @property
    def run_dir(self) -> Path:
        return self.built.run.path


def resume_config(run_dir: str | Path, *, steps: int | None = None, quiet: bool = False) -> RunConfig:
    """The saved config of an interrupted run, set to resume it (optionally to a new step count)."""
    run_path = Path(run_dir)
    config = saved_config(RunDir(run_path).read_config())
    config.resume, config.quiet = str(run_path), quiet
    if steps:
        config.algorithm.steps = steps
    return config


def build_env(config: RunConfig, engine: Engine, problems: list[Problem]):
    """The training environment: the config's vocabulary, rewards, decoding and prompt length."""
    from .envs import PromptRefineEnv

    vocab = ActionVocab.from_spec(engine.tokenizer, config.policy.action_vocab, empty=config.policy.empty_action)
    reward_mix = RewardMix(list(config.oracle.rewards), engine=engine)
    if reward_mix.needs_engine and engine.kind != "transformers":
        # Fail before training, not at the first step: a served engine may have no prompt log-probs.
        engine.answer_logprobs([engine.render("", problems[0].question)], [problems[0].answer])
    return PromptRefineEnv(engine, problems, vocab, reward_mix, decoding_from(config.oracle),
                           prompt_length=config.policy.prompt_length)


def make_agent(config: RunConfig, env, *, engine: Engine, run: RunDir | None = None,
               val_problems=(), probe_problems=()) -> tuple[object, str | None]:
    """(the config's agent, its untrained prompt for `probe_problems[0]` or None: see `Agent.initial_prompt`)."""
    from .agents import AGENTS

    agent = AGENTS[config.agent].from_config(config, env, engine=engine, run=run, val_problems=val_problems)
    return agent, agent.initial_prompt(probe_problems)


def build(config: RunConfig, *, engine: Engine | None = None, splits: dict[str, list[Problem]] | None = None,
          log: Callable[[str], None] = print) -> Built:
    """Wire a run: its directory (config.yaml, splits.json), problems, engine, environment and agent.

    `engine` and `splits` may be given to share them between runs (the headline script); otherwise the
    config's engine and data settings load them. A config with `resume` set continues that run.
    """
    config.validate()
    resume_step = None
    if config.resume:
        run_path = Path(config.resume)
        state_path = run_path / STATE_LAST
        if not state_path.exists():
            raise TrainError(f"{run_path} has no checkpoint ({STATE_LAST}) to resume from")
        resume_step = load_state(state_path)[1]["step"]
    else:
        policy = "" if config.agent in ("soft-prompt", "pez") else f"-{config.policy.policy}"  # they have none
        name = config.name or f"{config.agent}{policy}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_path = Path(config.output_dir) / name
        if (run_path / STATE_LAST).exists():
            raise TrainError(f"{run_path} already holds a run; use --resume {run_path} or another --name")
    torch.manual_seed(config.seed)
    run = RunDir(run_path, resume_from_step=resume_step)
    run.write_config({k: v for k, v in config.to_flat().items() if k != "quiet"})

    if splits is None:
        problems, splits, bad = problems_from_config(config.data, config.seed)
        if bad:
            log(f"skipped {len(bad)} bad rows, e.g. {bad[0]}")
        write_split_manifest(run.path / SPLITS, splits, config.seed)
    log(f"problems: {sum(map(len, splits.values()))} ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})")
    if engine is None:
        start = time.perf_counter()
        engine = load_engine(config.engine)
        where = (f"served by {', '.join(config.engine.base_url)}" if config.engine.engine == "openai"
                 else f"{engine.dtype}, {engine.device}")
        log(f"model: {engine.name} ({where}) loaded in {time.perf_counter() - start:.1f} s")

    env = build_env(config, engine, splits["train"])
    log(f"action vocabulary: {len(env.vocab)} tokens ({config.policy.action_vocab}); "
        f"rewards: {env.reward_mix.describe()}")
    val, test = splits["validation"][: config.val_size], splits["test"][: config.test_size]
    agent, initial_prompt = make_agent(config, env, engine=engine, run=run, val_problems=val, probe_problems=test)
    if resume_step is not None:
        agent.load_state(run.path / STATE_LAST)
        log(f"resumed {run.path} at step {agent.step}")
    return Built(config, engine, splits, env, agent, run, val, test, initial_prompt, resume_step)


def final_comparison(built: Built, *, log: Callable[[str], None] = print) -> dict:
    """The held-out comparison at the end of training: `evaluation.evaluate_run` on the run's test problems."""
    from .evaluation import evaluate_run, format_table

    report = evaluate_run(built.run.path, config=built.config, problems=built.test_problems, engine=built.engine,
                          output=built.run.path / FINAL_EVAL, progress=not built.config.quiet, log=log)
    top = report["systems"]["learned policy"]["prompts"]
    log("\nlearned prompt(s): " + "; ".join(f"{p['prompt']!r} (x{p['count']})" for p in top))
    log(f"held-out comparison on {len(built.test_problems)} test problems:\n{format_table(report)}")
    return report


def train(config: RunConfig, *, engine: Engine | None = None, splits: dict[str, list[Problem]] | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Build, train, save (summary.json, learning curve) and, unless `no_final_eval`, evaluate a run."""
    built = build(config, engine=engine, splits=splits, log=log)
    summary = built.agent.train(progress=not config.quiet)
    built.run.plot_learning_curve()
    built.run.close()
    log(f"trained: {summary['steps']} steps, {summary['oracle_pairs']} oracle pairs, "
        + (f"{summary['forward_passes']} forward and {summary['backward_passes']} backward LLM rows, "
           if config.agent in GRADIENT_AGENTS else "")
        + f"{summary['wall_s']:.0f} s; best validation accuracy {summary['best_val_accuracy']:.1%}")
    if "last_prompt" in summary:
        log(f"the last prompt{' (nearest tokens)' if config.agent == 'soft-prompt' else ''}: "
            f"{summary['last_prompt']!r}")
    if built.initial_prompt is not None:
        summary["initial_prompt"] = built.initial_prompt
        log(f"the untrained policy's greedy prompt: {built.initial_prompt!r}")
    (built.run.path / SUMMARY).write_text(json.dumps(summary, indent=2))
    report = None if config.no_final_eval else final_comparison(built, log=log)
    log(f"run directory: {built.run.path}")
    return TrainResult(built, summary, report)
