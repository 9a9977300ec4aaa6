"""The command line: `python run.py --agent reinforce` (train, the default) and `python run.py evaluate`.

This module is the composition root: it is the one place in `rlprompt_math` that imports `envs`
and `agents` (inside the commands), to wire the library, the environment and an agent together.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

HAND_WRITTEN = ("Let's think step by step.", "Answer with only the final number.",
                "Give the answer as a single number.")


class DefaultToTrain(click.Group):
    """`run.py --agent reinforce` means `run.py train --agent reinforce`."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["train", *args]
        return super().parse_args(ctx, args)


def _load_config_file(ctx, param, value):
    if value:
        import yaml

        settings = yaml.safe_load(Path(value).read_text()) or {}
        unknown = set(settings) - {p.name for p in ctx.command.params}
        if unknown:
            raise click.BadParameter(f"unknown settings {sorted(unknown)}", param=param)
        ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


@click.group(cls=DefaultToTrain, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rlprompt-math")
def main():
    """rlprompt-math: learn short discrete prompts that make a frozen LLM solve math better.

    With no command, `train` runs: `python run.py --agent reinforce`.
    """


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------


@main.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config_file, is_eager=True,
              expose_value=False, help="YAML file with any of these settings (flags given here override it).")
@click.option("--agent", type=click.Choice(["reinforce", "random", "fixed"]), default="reinforce", show_default=True,
              help="reinforce: policy gradient; random: random search on the same oracle budget; fixed: a "
                   "hand-written prompt (--fixed-prompt).")
@click.option("--model", default=None, metavar="NAME_OR_PATH",
              help="Frozen LLM: hub id, local directory or .gguf file. Default: the embedded SmolLM2-135M-Instruct.")
@click.option("--dtype", default="auto", show_default=True, help="auto | float32 | bfloat16 | float16.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--load-in-8bit", is_flag=True, help="Load the LLM in 8-bit with bitsandbytes (CUDA only).")
@click.option("--template", default=None, help="Prompt template, e.g. '{prompt} {question}' (raw) or "
              "'chat:{prompt} {question}'. Default: chat template, question then prompt.")
@click.option("--dataset", default="generator", show_default=True, metavar="PATH_OR_ID",
              help="'generator' (built-in, offline), a .jsonl/.csv/.parquet file, or a hub dataset id.")
@click.option("--format", "fmt", type=click.Choice(["auto", "gsm8k", "openmath", "math", "fields"]), default="auto",
              show_default=True, help="Dataset format (auto: detected from the columns).")
@click.option("--question-field", default=None, help="Column holding the question (format 'fields').")
@click.option("--answer-field", default=None, help="Column holding the answer (format 'fields').")
@click.option("--hub-split", default="train", show_default=True, help="Split to read from a hub dataset.")
@click.option("--skip-bad-rows", is_flag=True, help="Skip malformed rows (reported) instead of stopping.")
@click.option("--kinds", default="arithmetic", show_default=True,
              help="Generator problem kinds, comma-separated: arithmetic, order_of_operations, fractions, decimals, "
                   "percentages, word_one_step, word_two_step, linear_equation, or 'all'.")
@click.option("--difficulty", default="1,2", show_default=True, help="Generator difficulty levels (1-3), comma-separated.")
@click.option("--num-problems", default=2000, show_default=True, help="Generated problems (before the split).")
@click.option("--reward", "rewards", multiple=True, default=["correct", "partial:0.5"], show_default=True, metavar="SPEC",
              help="Reward function, repeatable: correct, partial, format, likelihood, module:fn or file.py:fn, "
                   "with an optional weight as the last field (partial:0.5).")
@click.option("--prompt-length", default=4, show_default=True, help="Prompt tokens the policy writes.")
@click.option("--action-vocab", default="words", show_default=True,
              help="words | words:PATH | frequent:N | tokens:PATH | full.")
@click.option("--empty-action/--no-empty-action", default=True, show_default=True,
              help="Include a 'no token' action, so prompts can be shorter than --prompt-length.")
@click.option("--policy", type=click.Choice(["unconditioned", "refiner", "autoregressive"]), default="unconditioned",
              show_default=True, help="unconditioned: one prompt for all questions; refiner: question-conditioned "
                                      "MLP with tied logits; autoregressive: GRU, token by token.")
@click.option("--hidden-size", default=256, show_default=True, help="Hidden size of the refiner policies.")
@click.option("--prompts-per-question", default=4, show_default=True, help="K prompts sampled per question.")
@click.option("--batch-size", default=8, show_default=True, help="Questions per step.")
@click.option("--steps", default=80, show_default=True, help="Training steps.")
@click.option("--lr", default=0.3, show_default=True, help="Policy learning rate (Adam).")
@click.option("--baseline", type=click.Choice(["none", "moving_average", "batch_mean", "rloo", "learned"]),
              default="rloo", show_default=True, help="REINFORCE baseline.")
@click.option("--normalize-rewards", is_flag=True, help="Z-score rewards per question across its K prompts.")
@click.option("--entropy-coef", default=0.01, show_default=True, help="Entropy bonus coefficient.")
@click.option("--entropy-schedule", type=click.Choice(["constant", "linear", "cosine"]), default="linear",
              show_default=True, help="How the entropy coefficient decays over training.")
@click.option("--max-grad-norm", default=1.0, show_default=True, help="Gradient clipping norm.")
@click.option("--temperature", default=1.0, show_default=True, help="Policy sampling temperature while training.")
@click.option("--top-k", default=0, show_default=True, help="Sample among the top k tokens per slot (0: all).")
@click.option("--max-new-tokens", default=32, show_default=True, help="Oracle answer length limit.")
@click.option("--stop-at-answer/--no-stop-at-answer", default=True, show_default=True,
              help="End an answer at the first line break after it states a final answer (saves forward passes).")
@click.option("--finalists", default=4, show_default=True,
              help="Unconditioned policies: at the end, also validate the N best-rewarded sampled prompts "
                   "and keep the best of them and the greedy prompt.")
@click.option("--eval-every", default=10, show_default=True, help="Validate the greedy prompt every N steps.")
@click.option("--val-size", default=48, show_default=True, help="Validation questions.")
@click.option("--test-size", default=200, show_default=True, help="Held-out test questions in the final comparison.")
@click.option("--fixed-prompt", default="Answer with only the final number.", show_default=True,
              help="The prompt of --agent fixed.")
@click.option("--seed", default=0, show_default=True, help="Seeds problem sampling, prompt sampling and the split.")
@click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Parent directory of run directories.")
@click.option("--name", default=None, help="Run directory name (default: agent-policy-seed-time).")
@click.option("--resume", "resume", default=None, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Continue an interrupted run from its last checkpoint, with its saved settings.")
@click.option("--no-final-eval", is_flag=True, help="Skip the held-out comparison at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(**opts):
    """Train a prompt policy against the frozen LLM and compare it with hand-written prompts.

    Writes runs/<name>/: config.yaml, splits.json, metrics.csv, tensorboard/, samples.jsonl,
    policy_best/last.safetensors, state_last.safetensors, learning_curve.png, final_eval/.
    """
    from .checkpoint import CheckpointError

    try:
        _train(opts)
    except KeyboardInterrupt:
        click.echo("\nInterrupted. The last checkpoint is intact; continue with --resume.", err=True)
        sys.exit(130)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from error


def _problems_from(opts):
    from .data import problems_from_config

    problems, splits, bad = problems_from_config(opts)
    if bad:
        click.echo(f"skipped {len(bad)} bad rows, e.g. {bad[0]}", err=True)
    return problems, splits


def _train(opts):
    import torch

    import envs  # noqa: F401
    from agents import FixedPromptAgent, RandomSearchAgent, ReinforceAgent, ReinforceConfig
    from envs import PromptRefineEnv

    from .checkpoint import load_state
    from .data import DataError, write_split_manifest
    from .llm import FrozenLLM, ModelLoadError
    from .policies import build_policy
    from .runlog import RunDir

    resume_step = None
    if opts["resume"]:
        run_path = Path(opts["resume"])
        saved = RunDir(run_path).read_config()
        saved.setdefault("stop_at_answer", False)  # runs saved before the option decoded to the limit
        saved.setdefault("finalists", 0)
        steps_override = opts["steps"] if _given("steps") else None
        opts = {**saved, "resume": str(run_path), "quiet": opts["quiet"]}
        if steps_override:
            opts["steps"] = steps_override
        state_path = run_path / "state_last.safetensors"
        if not state_path.exists():
            raise click.ClickException(f"{run_path} has no checkpoint (state_last.safetensors) to resume from")
        _, meta = load_state(state_path)
        resume_step = meta["step"]
    else:
        name = opts["name"] or f"{opts['agent']}-{opts['policy']}-s{opts['seed']}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_path = Path(opts["output_dir"]) / name
        if (run_path / "state_last.safetensors").exists():
            raise click.ClickException(f"{run_path} already holds a run; use --resume {run_path} or another --name")
    torch.manual_seed(opts["seed"])
    run = RunDir(run_path, resume_from_step=resume_step)
    run.write_config({k: v for k, v in opts.items() if k not in ("quiet",)} | {"rewards": list(opts["rewards"])})
    progress = not opts["quiet"]

    try:
        problems, splits = _problems_from(opts)
    except DataError as error:
        raise click.ClickException(str(error)) from error
    write_split_manifest(run.path / "splits.json", splits, opts["seed"])
    click.echo(f"problems: {len(problems)} ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})")
    try:
        start = time.perf_counter()
        llm = FrozenLLM.load(opts["model"], device=opts["device"], dtype=opts["dtype"],
                             load_in_8bit=opts["load_in_8bit"], template=opts["template"])
    except ModelLoadError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"model: {llm.name} ({llm.dtype}, {llm.device}) loaded in {time.perf_counter() - start:.1f} s")

    env = PromptRefineEnv(llm, splits["train"], split=None, prompt_length=opts["prompt_length"],
                          action_vocab=opts["action_vocab"], empty_action=opts["empty_action"],
                          rewards=list(opts["rewards"]),
                          max_new_tokens=opts["max_new_tokens"], stop_at_answer=opts["stop_at_answer"])
    click.echo(f"action vocabulary: {len(env.vocab)} tokens ({opts['action_vocab']}); "
               f"rewards: {env.reward_mix.describe()}")
    val = splits["validation"][: opts["val_size"]]
    config = ReinforceConfig(
        steps=opts["steps"], batch_size=opts["batch_size"], prompts_per_question=opts["prompts_per_question"],
        lr=opts["lr"], baseline=opts["baseline"], normalize_rewards=opts["normalize_rewards"],
        entropy_coef=opts["entropy_coef"], entropy_schedule=opts["entropy_schedule"],
        max_grad_norm=opts["max_grad_norm"], temperature=opts["temperature"], top_k=opts["top_k"] or None,
        eval_every=opts["eval_every"], finalists=opts["finalists"], seed=opts["seed"])
    if opts["agent"] == "reinforce":
        policy = build_policy(opts["policy"], llm=llm, vocab=env.vocab, prompt_length=opts["prompt_length"],
                              hidden_size=opts["hidden_size"])
        initial_prompt = _greedy_prompt_text(policy, env, splits["test"][:1], llm)
        agent = ReinforceAgent(env, policy, config, run=run, val_problems=val, llm=llm)
        if resume_step is not None:
            agent.load_state(run.path / "state_last.safetensors")
            click.echo(f"resumed {run.path} at step {agent.step}")
    elif opts["agent"] == "random":
        agent, initial_prompt = RandomSearchAgent(env, config, run=run, val_problems=val, llm=llm), None
    else:
        agent, initial_prompt = FixedPromptAgent(env, opts["fixed_prompt"], run=run, val_problems=val, llm=llm), None
    summary = agent.train(progress=progress)
    run.plot_learning_curve()
    run.close()
    click.echo(f"trained: {summary['steps']} steps, {summary['oracle_pairs']} oracle pairs, "
               f"{summary['wall_s']:.0f} s; best validation accuracy {summary['best_val_accuracy']:.1%}")
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2))
    if not opts["no_final_eval"]:
        _final_comparison(run.path, llm, env, splits["test"][: opts["test_size"]], initial_prompt, progress)
    click.echo(f"run directory: {run.path}")


def _given(name: str) -> bool:
    ctx = click.get_current_context()
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT,
                                                  click.core.ParameterSource.DEFAULT_MAP)


def _greedy_prompt_text(policy, env, problems, llm) -> str | None:
    from .evaluation import policy_prompts

    return policy_prompts(policy, env.vocab, problems, llm)[0] if problems else None


def _final_comparison(run_path: Path, llm, env, test_problems, initial_prompt, progress):
    from .checkpoint import load_policy
    from .evaluation import compare_systems, format_table, policy_prompts, write_report

    policy, vocab, _ = load_policy(run_path / "policy_best.safetensors", llm)
    systems = {"learned policy": policy_prompts(policy, vocab, test_problems, llm)}
    if initial_prompt:
        systems[f"initial policy: {initial_prompt!r}"] = [initial_prompt] * len(test_problems)
    # With the empty action, the untrained policy's greedy prompt is no prompt at all.
    systems["(no prompt)" + ("; the initial policy" if initial_prompt == "" else "")] = [""] * len(test_problems)
    for text in HAND_WRITTEN:
        systems[text] = [text] * len(test_problems)
    report = compare_systems(llm, env.reward_mix, test_problems, systems, env.decoding, progress=progress)
    write_report(report, test_problems, run_path / "final_eval")
    top = report["systems"]["learned policy"]["prompts"]
    click.echo("\nlearned prompt(s): " + "; ".join(f"{p['prompt']!r} (x{p['count']})" for p in top))
    click.echo(f"held-out comparison on {len(test_problems)} test problems:\n{format_table(report)}")


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--dataset", default=None, help="Evaluate on this dataset instead of the run's (all of it).")
@click.option("--question-field", default=None)
@click.option("--answer-field", default=None)
@click.option("--split", default="test", show_default=True, help="Split of the run's problems (train/validation/test).")
@click.option("--limit", default=200, show_default=True, help="At most this many problems.")
@click.option("--baseline-prompt", "baseline_prompts", multiple=True, help="Extra hand-written prompt (repeatable).")
@click.option("--no-default-baselines", is_flag=True, help="Only the prompts given with --baseline-prompt.")
@click.option("--model", default=None, help="Score the prompts on another model (transfer).")
@click.option("--max-new-tokens", default=None, type=int, help="Default: the run's setting.")
@click.option("--output", default=None, help="Report directory (default: RUN_DIR/eval-<split>[-<model>]).")
@click.option("--quiet", is_flag=True)
def evaluate(run_dir, checkpoint, dataset, question_field, answer_field, split, limit, baseline_prompts,
             no_default_baselines, model, max_new_tokens, output, quiet):
    """Score a saved policy against hand-written prompts on held-out problems (paired, same decoding)."""
    from .checkpoint import CheckpointError
    from .data import DataError, load_problems
    from .evaluation import DEFAULT_BASELINES, evaluate_run, format_table
    from .llm import ModelLoadError

    try:
        problems = None
        if dataset:
            problems, _ = load_problems(dataset, question_field=question_field, answer_field=answer_field)
        baselines = ([] if no_default_baselines else list(DEFAULT_BASELINES)) + list(baseline_prompts)
        report = evaluate_run(run_dir, checkpoint=checkpoint, problems=problems, split=split, limit=limit,
                              baseline_prompts=baselines, model=model, max_new_tokens=max_new_tokens,
                              output=output, progress=not quiet, log=click.echo)
    except (DataError, ModelLoadError, CheckpointError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(format_table(report))
    paths = report["_paths"]
    click.echo(f"report: {paths['report']}  per-question: {paths['per_question']}  chart: {paths['chart']}")
