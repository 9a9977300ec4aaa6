"""The command line: `python run.py --agent reinforce` (train, the default), `python run.py evaluate` and
`python run.py serve vllm|llama-server`.

Thin: the `train` options are generated from the fields of `config.RunConfig` (name, default, choices
and help text all come from there), parsed into a config, and handed to `train.train`.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

import click

from .config import (
    REFERENCE_PROMPTS,
    ConfigError,
    RunConfig,
    check_setting_types,
    cli_fields,
    field_default,
    flat_field_names,
    read_settings,
)


class DefaultToTrain(click.Group):
    """`run.py --agent reinforce` means `run.py train --agent reinforce`."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["train", *args]
        return super().parse_args(ctx, args)


class _BadConfigFile(click.ClickException):
    """A --config file that cannot be used: one line, and a usage error's exit status."""

    exit_code = 2


def _load_config_file(ctx, param, value):
    if value:
        try:  # before click reads the values: it would cut `steps: 1.7` to 1
            settings = read_settings(value, what="--config file")
            unknown = set(settings) - set(flat_field_names())
            if unknown:
                raise ConfigError(f"{value}: unknown settings {sorted(unknown)}")
            check_setting_types(settings, source=value)
        except ConfigError as error:
            raise _BadConfigFile(str(error)) from None
        ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def _option(f: dataclasses.Field, help_text: str):
    """The click option of one config field: `--field-name`, its default, type, choices and docstring."""
    meta, default = f.metadata, f.default
    flag = meta.get("flag", "--" + f.name.replace("_", "-"))
    kwargs = {"default": default, "help": help_text, "show_default": not (default is None or default is False or default == ())}
    if isinstance(default, bool):
        decls = [f"{flag}/--no-{flag[2:]}"] if default else [flag]
        kwargs["is_flag"] = True
    else:
        decls = [flag]
        if "choices" in meta:
            kwargs["type"] = click.Choice(meta["choices"])
        elif meta.get("path") == "dir":
            kwargs["type"] = click.Path(file_okay=False)
        elif meta.get("path") == "existing_dir":
            kwargs["type"] = click.Path(exists=True, file_okay=False)
        elif "type" in meta:
            kwargs["type"] = meta["type"]
        elif isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        if meta.get("multiple"):
            kwargs["multiple"] = True
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
    return click.option(*decls, f.name, **kwargs)


def config_options(command):
    """Decorate `command` with one option per field of RunConfig (see config.py)."""
    for f, help_text in reversed(cli_fields()):
        command = _option(f, help_text)(command)
    return click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config_file,
                        is_eager=True, expose_value=False,
                        help="YAML file with any of these settings (flags given here override it).")(command)


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
@config_options
def train(**opts):
    """Train a prompt policy against the frozen LLM and compare it with the hand-written reference prompts.

    Writes runs/<name>/: config.yaml, splits.json, metrics.csv, tensorboard/, samples.jsonl,
    policy_best/last.safetensors, state_last.safetensors, learning_curve.png, summary.json, final_eval/.
    """
    if not opts["resume"]:  # a setting out of range is refused at once, before torch is imported
        try:
            copy.deepcopy(RunConfig.from_flat(opts)).validate()
        except ConfigError as error:
            raise click.ClickException(str(error)) from None
    from . import train as training

    try:
        if opts["resume"]:  # the run's own settings: a flag or --config key that would change one is refused
            given = {name: opts[name] for name in flat_field_names()
                     if name not in ("resume", "quiet") and _given(name, config_file=True)}
            config = training.resume_config(opts["resume"], changes=given, quiet=opts["quiet"], log=click.echo)
        else:
            config = RunConfig.from_flat(opts)
        training.train(config, log=click.echo)
    except KeyboardInterrupt:
        click.echo("\nInterrupted. The last checkpoint is intact; continue with --resume.", err=True)
        sys.exit(130)
    except training.USER_ERRORS as error:
        raise click.ClickException(str(error)) from error


def _given(name: str, *, config_file: bool = False) -> bool:
    """Whether the option `name` was given (on the command line; with `config_file`, also in --config)."""
    ctx = click.get_current_context()
    defaults = (click.core.ParameterSource.DEFAULT,) if config_file else (
        click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    return ctx.get_parameter_source(name) not in defaults


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--dataset", default=None, help="Evaluate on this dataset instead of the run's (all of it).")
@click.option("--question-field", default=None)
@click.option("--answer-field", default=None)
@click.option("--kind-field", default=None,
              help="Column of --dataset holding each problem's kind: adds the per-kind table (a column named 'kind' "
                   "is read without it).")
@click.option("--split", default="test", show_default=True, help="Split of the run's problems (train/validation/test).")
@click.option("--limit", default=field_default("test_size"), show_default=True, type=click.IntRange(min=1),
              help="At most this many problems.")
@click.option("--reference-prompt", "reference_prompts", multiple=True,
              help="One more hand-written reference prompt to compare with (repeatable).")
@click.option("--no-default-references", is_flag=True,
              help="Leave out the default reference prompts: only those given with --reference-prompt.")
@click.option("--reference-shots", type=click.IntRange(min=0), default=None, metavar="K",
              help="Add the few-shot reference: the first K training problems of the run, answers in the model's "
                   "own form (0: none). Default: the run's --reference-shots.")
@click.option("--model", default=None, help="Score the prompts on another model (transfer).")
@click.option("--max-new-tokens", default=None, type=click.IntRange(min=1), help="Default: the run's setting.")
@click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Default: the dtype the run used (recorded in its config.yaml).")
@click.option("--device", default=None, help="Default: the device the run used (recorded in its config.yaml).")
@click.option("--output-dir", "--output", "output", default=None, type=click.Path(file_okay=False),
              help="Report directory (default: RUN_DIR/eval-<split>[-<model>]).")
@click.option("--quiet", is_flag=True)
def evaluate(run_dir, checkpoint, dataset, question_field, answer_field, kind_field, split, limit, reference_prompts,
             no_default_references, reference_shots, model, max_new_tokens, dtype, device, output, quiet):
    """Score a saved policy against the hand-written reference prompts and the few-shot reference on held-out
    problems (paired, same decoding)."""
    from .data import load_problems
    from .evaluation import evaluate_run, format_table
    from .train import USER_ERRORS

    try:
        problems = None
        if dataset:
            problems, _ = load_problems(dataset, question_field=question_field, answer_field=answer_field,
                                        kind_field=kind_field)
        references = ([] if no_default_references else list(REFERENCE_PROMPTS)) + list(reference_prompts)
        report = evaluate_run(run_dir, checkpoint=checkpoint, problems=problems, split=split, limit=limit,
                              reference_prompts=references, reference_shots=reference_shots, model=model,
                              max_new_tokens=max_new_tokens, output=output, progress=not quiet, log=click.echo,
                              dtype=dtype, device=device)
    except USER_ERRORS as error:
        raise click.ClickException(str(error)) from error
    click.echo(format_table(report))
    paths = report["_paths"]
    click.echo(f"report: {paths['report']}  per-question: {paths['per_question']}  chart: {paths['chart']}")


# ------------------------------------------------------------------------------------------------
# prompt
# ------------------------------------------------------------------------------------------------


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("questions", nargs=-1, required=True)
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per question (text and chat messages).")
def prompt(run_dir, questions, checkpoint, as_json):
    """Print the prompt a saved policy writes for each QUESTION, as text and as the chat messages to send.

    A question-conditioned policy (--policy refiner) writes a prompt per question:

        python run.py prompt runs/<name> "What is 17% of 300?" "Solve for x: 3x + 4 = 19."
    """
    import json

    from .evaluation import run_prompts
    from .train import USER_ERRORS

    try:
        records = run_prompts(run_dir, questions, checkpoint=checkpoint, log=lambda line: click.echo(line, err=True))
    except USER_ERRORS as error:
        raise click.ClickException(str(error)) from error
    for record in records:
        if as_json:
            click.echo(json.dumps(record))
            continue
        click.echo(f"question: {record['question']}\nprompt:   {record['prompt']}\nmessages:")
        for turn in record["messages"]:
            click.echo(f"  {turn['role']:>9s}: " + turn["content"].replace("\n", "\n" + " " * 13))
        click.echo("")


# ------------------------------------------------------------------------------------------------
# serve
# ------------------------------------------------------------------------------------------------

@main.group()
def serve():
    """Start an OpenAI-compatible server on 127.0.0.1 for `--engine openai --base-url URL`."""


@serve.command("vllm")
@click.option("--model", default=None, help="GGUF file, model directory or hub id (default: the embedded "
              "SmolLM2-135M-Instruct, exported once for vLLM).")
@click.option("--port", type=int, default=8000, show_default=True, help="First port (replica k gets port + k).")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Servers on consecutive ports (on a CPU each gets cores / replicas threads).")
@click.option("--dtype", default="float32", show_default=True, help="vLLM's --dtype (float32, bfloat16, auto).")
@click.option("--vllm-python", default=None, help="The Python of an installed vLLM (default: this one if it imports "
              "vllm, else vLLM's CPU build installed once under ~/.cache/rlprompt_math).")
@click.option("--log-dir", default=None, type=click.Path(file_okay=False), help="Keep each server's log here.")
def serve_vllm(model, port, replicas, dtype, vllm_python, log_dir):
    """vLLM's OpenAI server (its CPU build from PyPI where no vLLM is installed). Prints the base URL(s)
    when ready; Ctrl-C stops."""
    from .servers import vllm
    from .servers.process import stop_on_signals

    stop_on_signals()  # Ctrl-C, SIGTERM and SIGHUP all stop the server(s) within seconds, port closed
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    try:
        with vllm.serve(model, port=port, replicas=replicas, dtype=dtype, python=vllm_python,
                        log_dir=Path(log_dir) if log_dir else None, log=click.echo) as servers:
            _serving([s.base_url for s in servers], servers[0].served_name, [s.process for s in servers])
    except vllm.VllmError as error:
        raise click.ClickException(str(error)) from error


@serve.command("llama-server")
@click.option("--model", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A GGUF file (default: the embedded SmolLM2-135M-Instruct, re-exported as F16).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--slots", type=int, default=16, show_default=True, help="Parallel sequences.")
def serve_llama_server(model, port, slots):
    """llama.cpp's llama-server (built once from PyPI sources). Prints the base URL when ready; Ctrl-C stops."""
    from .servers import llama_cpp
    from .servers.process import stop_on_signals

    stop_on_signals()  # Ctrl-C, SIGTERM and SIGHUP all stop the server within seconds, port closed
    try:
        llama_cpp.build(log=click.echo)
        with llama_cpp.serve(Path(model) if model else None, port=port, slots=slots, log=click.echo) as server:
            _serving([server.base_url], server.alias, [server.process])
    except llama_cpp.LlamaCppError as error:
        raise click.ClickException(str(error)) from error


def _serving(urls: list[str], served_model: str, processes) -> None:
    click.echo(f"serving {served_model!r} at {' '.join(urls)}")
    click.echo(f"train with: python run.py --agent reinforce --engine openai --served-model {served_model} "
               + " ".join(f"--base-url {u}" for u in urls))
    click.echo("Ctrl-C stops.")
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        click.echo("a server exited; stopping", err=True)
    except KeyboardInterrupt:
        click.echo("\nstopping")
