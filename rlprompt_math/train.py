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

from .checkpoint import (
    EXEMPLARS,
    FINAL_EVAL,
    POLICY_BEST,
    POLICY_LAST,
    PROMPT,
    SPLITS,
    STATE_LAST,
    SUMMARY,
    CheckpointError,
    load_policy,
    load_state,
)
from .config import EXEMPLAR_AGENTS, GRADIENT_AGENTS, ConfigError, RunConfig, saved_config
from .data import DataError, Problem, problems_from_config, write_split_manifest
from .engines import Engine, EngineError, load_engine
from .engines.transformers.loading import ModelLoadError
from .exemplars import ExemplarPool
from .oracle import decoding_from
from .prompt_space import PromptSpace, draw_pool
from .rewards import RewardError, RewardMix
from .runlog import RunDir
from .templates import CHAT_PREFIX, DEFAULT_CONTENT_TEMPLATE, as_prompt
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


def build_env(config: RunConfig, engine: Engine, problems: list[Problem], *, pool: ExemplarPool | None = None):
    """The training environment: the config's vocabulary, rewards, decoding and prompt space (its prompt
    length; with `pool`, the config's exemplar slots and answer forms over it: see `exemplar_pool`)."""
    from .envs import PromptRefineEnv

    vocab = ActionVocab.from_spec(engine.tokenizer, config.policy.action_vocab, empty=config.policy.empty_action)
    reward_mix = RewardMix(list(config.oracle.rewards), engine=engine)
    if reward_mix.needs_engine and engine.kind != "transformers":
        # Fail before training, not at the first step: a served engine may have no prompt log-probs.
        engine.answer_logprobs([engine.render("", problems[0].question)], [problems[0].answer])
    space = (PromptSpace(vocab, config.policy.prompt_length, pool, config.policy.shots, config.policy.answer_forms)
             if pool is not None else PromptSpace(vocab, config.policy.prompt_length))
    return PromptRefineEnv(engine, problems, vocab, reward_mix, decoding_from(config.oracle), space=space)


def exemplar_pool(config: RunConfig, engine: Engine, splits: dict[str, list[Problem]], run: RunDir, *,
                  log: Callable[[str], None] = print) -> tuple[ExemplarPool | None, int]:
    """(the run's exemplar pool, the oracle pairs spent on it): None without exemplar slots (--shots 0, or an
    agent that does not choose exemplars). Drawn from the training split only and saved in the run
    directory (EXEMPLARS); a resumed run reads it back and asks the engine for nothing."""
    if not config.policy.shots or config.agent not in EXEMPLAR_AGENTS:
        return None, 0
    path = run.path / EXEMPLARS
    if config.resume and path.exists():
        return ExemplarPool.from_dict(json.loads(path.read_text())), 0
    pool, pairs = draw_pool(splits, size=config.policy.exemplar_pool, seed=config.seed,
                            forms=config.policy.answer_forms, engine=engine, decoding=decoding_from(config.oracle))
    path.write_text(json.dumps(pool.to_dict(), indent=2))
    log(f"exemplar pool: {len(pool)} training problems"
        + (f"; the model's own completions cost {pairs} oracle pairs" if pairs else ""))
    return pool, pairs


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
    if not config.no_final_eval and config.reference_shots > len(splits["train"]):  # fail now, not after training
        raise ConfigError(f"--reference-shots {config.reference_shots}: the run has {len(splits['train'])} training "
                          "problems (--reference-shots 0: no few-shot reference)")
    if engine is None:
        start = time.perf_counter()
        engine = load_engine(config.engine)
        where = (f"served by {', '.join(config.engine.base_url)}" if config.engine.engine == "openai"
                 else f"{engine.dtype}, {engine.device}")
        log(f"model: {engine.name} ({where}) loaded in {time.perf_counter() - start:.1f} s")

    pool, pool_pairs = exemplar_pool(config, engine, splits, run, log=log)
    env = build_env(config, engine, splits["train"], pool=pool)
    log(f"action vocabulary: {len(env.vocab)} tokens ({config.policy.action_vocab}); "
        f"rewards: {env.reward_mix.describe()}")
    if env.space.shots:
        log(f"prompt space: {env.space.describe()}")
    val, test = splits["validation"][: config.val_size], splits["test"][: config.test_size]
    agent, initial_prompt = make_agent(config, env, engine=engine, run=run, val_problems=val, probe_problems=test)
    agent.oracle_pairs += pool_pairs  # a resumed run's count (restored below) already holds them
    if resume_step is not None:
        agent.load_state(run.path / STATE_LAST)
        log(f"resumed {run.path} at step {agent.step}")
    return Built(config, engine, splits, env, agent, run, val, test, initial_prompt, resume_step)


def write_kept_prompt(built: Built) -> dict | None:
    """The kept prompt as chat messages a user can paste into any chat API (PROMPT in the run directory):
    {"instruction", "exemplars", "messages_for_a_question"}. A question-conditioned policy writes a prompt
    per question: the file holds the one for the first test question, and says so. None for a soft prompt
    (embeddings, not text) or a run that saved no policy."""
    from .evaluation import policy_prompts

    path = next((built.run.path / name for name in (POLICY_BEST, POLICY_LAST) if (built.run.path / name).exists()),
                None)
    if path is None:
        return None
    policy, space, _ = load_policy(path, built.engine)
    if policy.kind == "soft":
        return None
    probe = (built.test_problems or built.val_problems or built.splits["train"])[:1]
    prompt = as_prompt(policy_prompts(policy, space, probe, built.engine)[0])
    template = built.config.engine.template
    content = template[len(CHAT_PREFIX):] if template and template.startswith(CHAT_PREFIX) else DEFAULT_CONTENT_TEMPLATE
    record = {**prompt.to_dict(), "messages_for_a_question": prompt.messages("<question>", content)}
    if policy.uses_observation:
        record["for_question"] = probe[0].question
        record["note"] = (f"the {policy.kind} policy writes a prompt per question; this is the one for "
                          "for_question (run.py evaluate scores it on every question)")
    (built.run.path / PROMPT).write_text(json.dumps(record, indent=2))
    return record


def final_comparison(built: Built, *, log: Callable[[str], None] = print) -> dict:
    """The held-out comparison at the end of training: `evaluation.evaluate_run` on the run's test problems,
    with the few-shot reference drawn from the run's training split (`RunConfig.reference_shots`)."""
    from .evaluation import evaluate_run, format_table

    report = evaluate_run(built.run.path, config=built.config, problems=built.test_problems, engine=built.engine,
                          train_problems=built.splits["train"], output=built.run.path / FINAL_EVAL,
                          progress=not built.config.quiet, log=log)
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
        + f"{summary['wall_s']:.0f} s; best validation accuracy {summary['best_val_accuracy']:.1%}"
        + (f" (untrained: {summary['untrained_val_accuracy']:.1%})" if summary.get("untrained_val_accuracy") is not None
           else ""))
    if "last_prompt" in summary:
        log(f"the last prompt{' (nearest tokens)' if config.agent == 'soft-prompt' else ''}: "
            f"{summary['last_prompt']!r}")
    if built.initial_prompt is not None:
        summary["initial_prompt"] = built.initial_prompt
        log(f"the untrained policy's greedy prompt: {built.initial_prompt!r}")
    (built.run.path / SUMMARY).write_text(json.dumps(summary, indent=2))
    write_kept_prompt(built)
    report = None if config.no_final_eval else final_comparison(built, log=log)
    log(f"run directory: {built.run.path}")
    return TrainResult(built, summary, report)
