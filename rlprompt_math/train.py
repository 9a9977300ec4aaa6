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

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import (
    CONFIG,
    EXEMPLARS,
    FINAL_EVAL,
    POLICY_BEST,
    POLICY_LAST,
    POLICY_FORMAT,
    PROMPT,
    SPLIT_MANIFEST,
    STATE_LAST,
    SUMMARY,
    CheckpointError,
    dumps_json,
    load_policy,
    load_state,
)
from .checkpoint import read as read_checkpoint
from .config import ConfigError, RunConfig, saved_config
from .data import DataError, Problem, problems_from_config, write_split_manifest
from .engines import Engine, EngineError, load_engine, pin_engine_settings
from .engines.transformers.loading import ModelLoadError
from .exemplars import ExemplarPool
from .oracle import decoding_from
from .prompt_space import draw_pool
from .rewards import RewardError
from .runlog import RunDir, unwritable_reason
from .templates import as_prompt, chat_content_template
from .vocab import VocabError


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


# The settings a resumed run may change (the others would make it another run): --steps continues training
# further, the rest only change what is printed or compared at the end.
MAY_CHANGE_ON_RESUME = ("steps", "quiet", "no_final_eval")


def resume_config(run_dir: str | Path, *, steps: int | None = None, quiet: bool = False, changes: dict | None = None,
                  log: Callable[[str], None] = print) -> RunConfig:
    """The saved config of an interrupted run, set to resume it (optionally to a new step count).

    `changes` are the settings the user gave (the command line's flags): those in MAY_CHANGE_ON_RESUME are
    applied (and said), any other that differs from the run's raises TrainError naming each."""
    run_path = Path(run_dir)
    config = saved_config(RunDir(run_path).read_config())
    changes = {**(changes or {}), **({"steps": steps} if steps else {})}
    saved = config.to_flat()
    plain = lambda value: list(value) if isinstance(value, tuple) else value  # noqa: E731 (flags give tuples)
    differ = [name for name, value in changes.items()
              if name not in MAY_CHANGE_ON_RESUME and plain(value) != saved.get(name)]
    if differ:
        from .config import flag_of

        listed = ", ".join(f"{flag_of(n)} {_shown(changes[n])} (the run's: {_shown(saved.get(n))})" for n in differ)
        raise TrainError(f"--resume {run_path} continues the run with its own settings, and these differ: {listed}. "
                         "Only --steps (and --quiet, --no-final-eval) may change on resume; start a new run for "
                         "other settings")
    config.resume, config.quiet = str(run_path), quiet
    if "steps" in changes and changes["steps"] != config.algorithm.steps:
        log(f"--steps {changes['steps']} applied (the run was started with --steps {config.algorithm.steps})")
        config.algorithm.steps = changes["steps"]
    if changes.get("no_final_eval"):
        config.no_final_eval = True
    return config


def _shown(value) -> str:
    """A setting's value as a user writes it on the command line."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def build_env(config: RunConfig, engine: Engine, problems: list[Problem], *, pool: ExemplarPool | None = None):
    """The training environment: `envs.assemble_env` with the config's vocabulary, rewards, decoding and prompt
    space (its prompt length; with `pool`, the config's exemplar slots and answer forms over it: see
    `exemplar_pool`)."""
    from .envs import assemble_env

    return assemble_env(engine, problems, pool=pool, prompt_length=config.policy.prompt_length,
                        action_vocab=config.policy.action_vocab, empty_action=config.policy.empty_action,
                        rewards=config.oracle.rewards, decoding=decoding_from(config.oracle),
                        shots=config.policy.shots, answer_forms=config.policy.answer_forms)


def exemplar_pool(config: RunConfig, engine: Engine, splits: dict[str, list[Problem]], run: RunDir, *,
                  log: Callable[[str], None] = print) -> tuple[ExemplarPool | None, int]:
    """(the run's exemplar pool, the oracle pairs spent on it): None without exemplar slots (--shots 0, or an
    agent that does not choose exemplars). Drawn from the training split only and saved in the run
    directory (EXEMPLARS); a resumed run reads it back and asks the engine for nothing."""
    from .agents import AGENTS

    if not config.policy.shots or not AGENTS[config.agent].chooses_exemplars:
        return None, 0
    path = run.path / EXEMPLARS
    if config.resume and path.exists():
        return ExemplarPool.from_dict(json.loads(path.read_text())), 0
    pool, pairs = draw_pool(splits, size=config.policy.exemplar_pool, seed=config.seed,
                            forms=config.policy.answer_forms, engine=engine, decoding=decoding_from(config.oracle))
    path.write_text(dumps_json(pool.to_dict(), indent=2))
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
    from .agents import AGENTS, check_config, describe_plan

    check_config(config)  # every setting in range, the agent's rules too, before anything is read, loaded or written
    log(f"oracle pairs planned: {describe_plan(config)}")
    resume_step = None
    if config.resume:
        run_path = Path(config.resume)
        state_path = run_path / STATE_LAST
        if not state_path.exists():
            raise TrainError(f"{run_path} has no checkpoint ({STATE_LAST}) to resume from")
        state = load_state(state_path)[1]
        resume_step = state["step"]
        check_state_fits(config, run_path, state)
    else:
        policy = f"-{config.policy.policy}" if AGENTS[config.agent].names_policy else ""
        name = config.name or f"{config.agent}{policy}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_path = Path(config.output_dir) / name
        if (run_path / STATE_LAST).exists():
            raise TrainError(f"{run_path} already holds a run; use --resume {run_path} or another --name")
    reason = unwritable_reason(run_path)
    if reason:
        raise TrainError(f"cannot write the run directory {run_path}: {reason} (choose a writable --output-dir)")
    torch.manual_seed(config.seed)

    # Problems and the model before the run directory: a run refused for its data leaves nothing behind.
    loaded_splits = splits is None
    if loaded_splits:
        problems, splits, bad = problems_from_config(config.data, config.seed)
        if bad:
            log(f"skipped {len(bad)} bad rows, e.g. {bad[0]}")
    log(f"problems: {sum(map(len, splits.values()))} ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})")
    check_splits(config, splits)
    if engine is None:
        given = "as the run recorded" if config.resume else "as asked"
        log(f"dtype: {pin_engine_settings(config.engine, given=given)}")
        start = time.perf_counter()
        engine = load_engine(config.engine)
        where = (f"served by {', '.join(config.engine.base_url)}" if config.engine.engine == "openai"
                 else f"{engine.dtype}, {engine.device}")
        log(f"model: {engine.name} ({where}) loaded in {time.perf_counter() - start:.1f} s")
    else:
        record_engine_settings(config.engine, engine)
    check_question_lengths(config, engine, splits)

    fresh = not run_path.exists()
    run = RunDir(run_path, resume_from_step=resume_step)
    try:
        run.write_config({k: v for k, v in config.to_flat().items() if k != "quiet"})
        if loaded_splits:
            write_split_manifest(run.path / SPLIT_MANIFEST, splits, config.seed)
        pool, pool_pairs = exemplar_pool(config, engine, splits, run, log=log)
        env = build_env(config, engine, splits["train"], pool=pool)
        log(f"action vocabulary: {len(env.vocab)} tokens ({config.policy.action_vocab}); "
            f"rewards: {env.reward_mix.describe()}")
        if env.space.shots:
            log(f"prompt space: {env.space.describe()}")
        val, test = splits["validation"][: config.val_size], splits["test"][: config.test_size]
        agent, initial_prompt = make_agent(config, env, engine=engine, run=run, val_problems=val,
                                           probe_problems=test)
        agent.oracle_pairs += pool_pairs  # a resumed run's count (restored below) already holds them
        if resume_step is not None:
            try:
                agent.load_state(run.path / STATE_LAST)
            except CheckpointError:
                raise
            except (RuntimeError, ValueError, KeyError) as error:  # e.g. a size mismatch of the policy's weights
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise CheckpointError(f"{run.path / STATE_LAST} does not fit the run's settings in {CONFIG} "
                                      f"({first[:300]})") from error
            log(f"resumed {run.path} at step {agent.step}")
    except USER_ERRORS:
        if fresh:  # refused before training: leave no half-made run directory
            shutil.rmtree(run_path, ignore_errors=True)
        raise
    return Built(config, engine, splits, env, agent, run, val, test, initial_prompt, resume_step)


def check_state_fits(config: RunConfig, run_path: Path, state: dict) -> None:
    """Before the model loads: refuse to resume from a state file (and policy file) that another agent or other
    settings wrote than the run's config.yaml holds (its weights would not fit, or would mean something else)."""
    differ = []
    saved_agent = state.get("agent", "reinforce")
    if saved_agent != config.agent:
        differ.append(f"agent {saved_agent} (config.yaml: {config.agent})")
    saved = state.get("config") or {}
    for key, value in dataclasses.asdict(config.algorithm).items():
        if key not in ("steps",) and key in saved and saved[key] != value:
            differ.append(f"{key} {saved[key]} (config.yaml: {value})")
    policy_path = run_path / POLICY_LAST
    if config.agent == "reinforce" and policy_path.exists():
        policy = read_checkpoint(policy_path, POLICY_FORMAT)[1].get("policy", {})
        expected = {"kind": config.policy.policy, "prompt_length": config.policy.prompt_length}
        if config.policy.policy != "unconditioned":
            expected["width"] = config.policy.policy_width
        for key, value in expected.items():
            if key in policy and policy[key] != value:
                differ.append(f"policy {key} {policy[key]} (config.yaml: {value})")
    if differ:
        raise CheckpointError(f"{run_path} cannot be resumed: its checkpoint was saved with other settings than its "
                              f"{CONFIG} holds: {'; '.join(differ)}")


def check_splits(config: RunConfig, splits: dict[str, list[Problem]]) -> None:
    """Before the model loads: every split the run uses holds problems (a run validated on no questions reports
    -inf%, a comparison on none nan%), and the few-shot reference has its training problems."""
    counts = ", ".join(f"{name} {len(problems)}" for name, problems in splits.items())
    needed = ["train", "validation"] + ([] if config.no_final_eval else ["test"])
    for name in needed:
        if not splits[name]:
            raise DataError(f"the {name} split is empty ({sum(map(len, splits.values()))} problems split into "
                            f"{counts}): use more problems (--num-problems or a larger --dataset)"
                            + ("" if name != "test" else ", or --no-final-eval"))
    if not config.no_final_eval and config.reference_shots > len(splits["train"]):  # fail now, not after training
        raise ConfigError(f"--reference-shots {config.reference_shots}: the run has {len(splits['train'])} training "
                          "problems (--reference-shots 0: no few-shot reference)")


def record_engine_settings(engine_config, engine: Engine) -> None:
    """An engine given to `build` (shared between runs): record the dtype and device it runs in, as
    `pin_engine_settings` does for one that build loads."""
    from .engines.transformers.loading import dtype_name

    dtype, device = getattr(engine, "dtype", None), getattr(engine, "device", None)
    if isinstance(dtype, torch.dtype):
        engine_config.dtype = dtype_name(dtype)
    if isinstance(device, torch.device):
        engine_config.device = str(device)


def context_limit(engine: Engine) -> int | None:
    """The positions the engine's model takes (its config's max_position_embeddings; a served engine: its local
    copy's), or None where unknown."""
    for holder in (engine, getattr(engine, "local", None)):
        limit = getattr(getattr(getattr(holder, "model", None), "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def check_question_lengths(config: RunConfig, engine: Engine, splits: dict[str, list[Problem]]) -> None:
    """Before the first forward pass: refuse a question that does not fit the model (the chat template, the
    question and --max-new-tokens beyond its positions); one such row would otherwise ask the engine for an
    attention mask of its length squared."""
    limit = context_limit(engine)
    if limit is None:
        return
    overhead = len(engine.tokenizer(engine.render("", ""), add_special_tokens=False)["input_ids"])
    room = limit - overhead - config.oracle.max_new_tokens
    if room < 1:
        raise ConfigError(f"--max-new-tokens {config.oracle.max_new_tokens} leaves no room for a question: "
                          f"{engine.name} takes {limit} positions and its chat template uses {overhead}")
    problems = [p for split in splits.values() for p in split]
    lengths = [len(ids) for ids in engine.tokenizer([p.question for p in problems],
                                                    add_special_tokens=False)["input_ids"]]
    for problem, length in zip(problems, lengths):
        if length > room:
            raise DataError(f"{problem.source or 'dataset'}: the question of problem {problem.id} "
                            f"({problem.question[:40]!r}...) is {length} tokens; {engine.name} takes {limit} "
                            f"positions, which leaves {room} for a question after the chat template and "
                            f"--max-new-tokens {config.oracle.max_new_tokens}: shorten or remove it")


def write_kept_prompt(built: Built) -> dict | None:
    """The kept prompt as chat messages a user can paste into any chat API (PROMPT in the run directory):
    {"instruction", "exemplars", "messages_for_a_question"}. A question-conditioned policy writes a prompt
    per question: the file holds the one for the first test question, and says so. None for a soft prompt
    (embeddings, not text) or a run that saved no policy."""
    from .policies import policy_prompts

    path = next((built.run.path / name for name in (POLICY_BEST, POLICY_LAST) if (built.run.path / name).exists()),
                None)
    if path is None:
        return None
    policy, space, _ = load_policy(path, built.engine)
    if policy.kind == "soft":
        return None
    probe = (built.test_problems or built.val_problems or built.splits["train"])[:1]
    prompt = as_prompt(policy_prompts(policy, space, probe, built.engine)[0])
    content = chat_content_template(built.config.engine.template)
    record = {**prompt.to_dict(), "messages_for_a_question": prompt.messages("<question>", content)}
    if policy.uses_observation:
        record["for_question"] = probe[0].question
        record["note"] = (f"the {policy.kind} policy writes a prompt per question; this is the one for "
                          "for_question (run.py evaluate scores it on every question)")
    (built.run.path / PROMPT).write_text(dumps_json(record, indent=2))
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
    if summary.get("stopped") == "max_oracle_pairs":
        log(f"stopped at step {summary['steps']} of {config.algorithm.steps}: the next step, validation or finalist "
            f"would have taken the run past --max-oracle-pairs {config.algorithm.max_oracle_pairs:,} "
            f"({summary['oracle_pairs']:,} spent); the best so far is kept")
    built.run.plot_learning_curve()
    built.run.close()
    log(f"trained: {summary['steps']} steps, {summary['oracle_pairs']} oracle pairs, "
        + (f"{summary['forward_passes']} forward and {summary['backward_passes']} backward LLM rows, "
           if built.agent.trains_by_gradient else "")
        + f"{summary['wall_s']:.0f} s; best validation accuracy {summary['best_val_accuracy']:.1%}"
        + (f" (untrained: {summary['untrained_val_accuracy']:.1%})" if summary.get("untrained_val_accuracy") is not None
           else ""))
    if "last_prompt" in summary:
        reading = f" ({built.agent.reading})" if built.agent.reading else ""  # a soft prompt: its nearest tokens
        log(f"the last prompt{reading}: {summary['last_prompt']!r}")
    if built.initial_prompt is not None:
        summary["initial_prompt"] = built.initial_prompt
        log(f"the untrained policy's greedy prompt: {built.initial_prompt!r}")
    (built.run.path / SUMMARY).write_text(dumps_json(summary, indent=2))
    write_kept_prompt(built)
    report = None if config.no_final_eval else final_comparison(built, log=log)
    log(f"run directory: {built.run.path}")
    return TrainResult(built, summary, report)
