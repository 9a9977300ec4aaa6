"""What the bench scripts share: the hand-written prompts, labels, the machine's description, the base settings,
training one learner.

Scripts import it as `from common import ...` (bench/ is the script's own directory, so it is on the path), in
place of another script's private helpers (`grading.py` still reads `peer_suites.py`'s public names).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benches never download

from rlprompt_math.config import NO_PROMPT, REFERENCE_PROMPTS  # noqa: E402

HAND_WRITTEN = (*REFERENCE_PROMPTS, "Take a deep breath and work on this problem step-by-step.")


def machine_without_engine() -> str:
    """The machine every figure names: the CPU (model name and vector extensions), its cores, torch, and the GPU
    where there is one."""
    import torch

    from rlprompt_math.engines.transformers.loading import cpu_description

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__}{gpu}"


def machine(engine) -> str:
    """`machine_without_engine()` and the dtype and device `engine` runs in."""
    from rlprompt_math.engines.transformers.loading import dtype_name

    return f"{machine_without_engine()}, dtype {dtype_name(engine.dtype)} on {engine.device}"


# The learner a bench trains unless told otherwise: these options at the library's defaults.
LEARNER = ("agent", "action_vocab", "rewards", "baseline", "entropy_coef", "lr")


def base_settings(*defaults: str, **settings) -> dict:
    """Flat run settings: the options in LEARNER and `defaults` at the library's defaults, then `settings`."""
    from rlprompt_math.config import RunConfig

    flat = RunConfig().to_flat()
    return {**{k: flat[k] for k in (*LEARNER, *defaults)}, **settings}


def label(prompt: str) -> str:
    return NO_PROMPT if prompt == "" else repr(prompt)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def run_config(settings: dict, seed: int = 0, run_dir: Path | None = None):
    """The RunConfig `train_one` trains at `settings` (flat option names): validation every
    `settings["eval_every"]` steps where given, else every steps // 3; no final comparison."""
    from rlprompt_math.config import RunConfig

    where = {"output_dir": str(run_dir.parent), "name": run_dir.name} if run_dir is not None else {}
    return RunConfig.from_flat({**settings, "seed": seed, "no_final_eval": True, **where,
                                "eval_every": settings.get("eval_every", max(1, settings["steps"] // 3))})


def equal_budget(search: dict, learner: dict) -> dict:
    """Random search's settings `search`, with as many finalists as make it spend the oracle pairs that a run at
    `learner`'s settings spends (`train_one`'s runs; the library's equal-budget rule, `agents.oracle_pairs_planned`)."""
    from rlprompt_math.agents import RandomSearchAgent, oracle_pairs_planned

    pairs = oracle_pairs_planned(run_config(learner))
    return {**search, "finalists": RandomSearchAgent.finalists_for(pairs, run_config({**search, "finalists": 0}))}


MINIBATCH, FULL_EVAL_EVERY = 35, 5  # MIPROv2's defaults


def tpe_settings(pairs: int, reinforce: dict) -> dict:
    """MIPROv2's schedule (1 trial a step, a full evaluation every 5 and at the last, the empty prompt first) with
    the trials and minibatch (30-40 questions, 35 preferred) whose plan comes nearest `pairs` without passing it."""
    from rlprompt_math.agents import oracle_pairs_planned

    best = None
    for minibatch in sorted(range(30, 41), key=lambda b: abs(b - MINIBATCH)):
        for trials in range(1, pairs // minibatch + 1):
            settings = {**reinforce, "agent": "tpe", "steps": trials, "batch_size": minibatch,
                        "prompts_per_question": 1, "eval_every": FULL_EVAL_EVERY, "finalists": 0}
            planned = oracle_pairs_planned(run_config(settings))
            if planned <= pairs and (best is None or planned > best[0]):
                best = (planned, settings)
            if planned == pairs:
                return settings
    return best[1]


def halving_steps_settings(reinforce: dict, halving_steps: int) -> dict:
    """REINFORCE at `reinforce`'s settings whose last `halving_steps` measure by successive halving
    (--halving-steps), validated only at the end: the validations freed go to finalists, so the pairs are the same."""
    from rlprompt_math.agents import oracle_pairs_planned

    settings = {**reinforce, "eval_every": 0, "halving_steps": halving_steps, "finalists": 1}
    spare = oracle_pairs_planned(run_config(reinforce)) - oracle_pairs_planned(run_config(settings))
    return {**settings, "finalists": 1 + spare // reinforce["val_size"]}


def learner_settings(learner: str, reinforce: dict) -> dict:
    """The settings at which `learner` spends the oracle pairs of a REINFORCE run at `reinforce`'s settings."""
    from rlprompt_math.agents import oracle_pairs_planned

    if learner == "reinforce":
        return reinforce
    if learner == "reinforce-epochs":
        return {**reinforce, "update_epochs": 4}
    if learner == "reinforce-halving":  # the last third of the steps
        return halving_steps_settings(reinforce, max(1, reinforce["steps"] // 3))
    if learner == "tpe":
        return tpe_settings(oracle_pairs_planned(run_config(reinforce)), reinforce)
    return equal_budget({**reinforce, "agent": learner}, reinforce)  # finalists for REINFORCE's pairs


def train_one(engine, splits, settings: dict, seed: int, run_dir: Path, reuse: bool = False) -> dict:
    """Train one prompt policy through the one wiring (`rlprompt_math.train`) at `run_config(settings)`; its kept
    prompt and facts. With `reuse`, a finished run already in `run_dir` with the same settings is loaded instead."""
    from rlprompt_math.agents import check_config
    from rlprompt_math.checkpoint import POLICY_BEST, SUMMARY, load_policy
    from rlprompt_math.config import saved_config
    from rlprompt_math.policies import policy_prompts
    from rlprompt_math.runlog import RunDir
    from rlprompt_math.train import train

    config = check_config(run_config(settings, seed, run_dir))  # as a run fills it in (--shots by the agent)
    done = run_dir / SUMMARY
    # Not settings of the run itself; the shared engine decides dtype and device (recorded in place of auto).
    where = ("quiet", "output_dir", "name", "dtype", "device")

    def settings_of(flat: dict) -> dict:
        return json.loads(json.dumps({k: v for k, v in flat.items() if k not in where}))

    # A finished run's settings read as `--resume` reads them (`saved_config`: a setting added since takes its value
    # for older runs), so a new option does not make every earlier run look different.
    if reuse and done.exists() and settings_of(saved_config(RunDir(run_dir).read_config()).to_flat()) == \
            settings_of(config.to_flat()):
        summary = json.loads(done.read_text())
        wall_s = summary["wall_s"]
        click.echo(f"reused {run_dir} (trained earlier in {wall_s:.0f} s)")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time this script runs
        start = time.perf_counter()
        summary = train(config, engine=engine, splits=splits, log=click.echo).summary
        wall_s = time.perf_counter() - start
    policy, vocab, meta = load_policy(run_dir / POLICY_BEST, engine)
    return {"policy": policy, "vocab": vocab, "summary": summary, "wall_s": wall_s,
            "reading": meta.get("reading"),
            "prompts_of": lambda problems: policy_prompts(policy, vocab, problems, engine)}


