"""Seconds per training step of each agent on a device, through the same wiring as `run.py train`.

    python bench/routes_speed.py --device cuda [--steps 5] [--random-weights DIR]

Runs `--steps` steps of REINFORCE, soft-prompt, PEZ and the Gumbel-softmax Refiner (default settings
otherwise, no final comparison) and prints each one's seconds per step, its LLM forward and backward
rows, and the peak GPU memory. `--random-weights DIR` saves DIR's architecture with random weights and
trains against that (for a machine without the GGUF file): the timings hold for the architecture,
the accuracies mean nothing. This is the CUDA check of issue 14 (the routes run on CUDA, and how fast).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time

import click
import torch

from common import machine_without_engine  # bench/ is on the path
from rlprompt_math.agents import AGENTS

# REINFORCE and every gradient route; Gumbel-softmax on the Refiner (its question-conditioned policy).
RUNS = {"reinforce": {"agent": "reinforce"},
        **{agent: {"agent": agent} for agent, cls in AGENTS.items() if cls.trains_by_gradient and agent != "gumbel"},
        "gumbel refiner": {"agent": "gumbel", "policy": "refiner"}}


@click.command()
@click.option("--device", default="cuda", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--random-weights", default=None, metavar="DIR")
def main(device, dtype, steps, random_weights):
    from rlprompt_math.checkpoint import METRICS
    from rlprompt_math.config import RunConfig
    from rlprompt_math.train import train

    from rlprompt_math.engines.transformers.loading import load_random_weights

    scratch = tempfile.mkdtemp(prefix="routes-speed-")
    model = None
    if random_weights:
        weights, tokenizer, _ = load_random_weights(random_weights, device="cpu", dtype="float32")
        model = os.path.join(scratch, "model")
        weights.save_pretrained(model)
        tokenizer.save_pretrained(model)
    print(f"machine: {machine_without_engine()}; device {device}; {steps} steps each; model "
          f"{'random weights, ' + random_weights if random_weights else 'the embedded default'}")
    for label, settings in RUNS.items():
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        config = RunConfig.from_flat({**settings, "model": model, "device": device, "dtype": dtype, "steps": steps,
                                      "eval_every": steps, "val_size": 16, "no_final_eval": True, "quiet": True,
                                      "num_problems": 400, "output_dir": scratch, "name": label.replace(" ", "-")})
        start = time.perf_counter()
        try:
            result = train(config, log=lambda *_: None)
        except Exception as error:  # report every route, even when one fails
            print(f"  {label:15s}: FAILED {type(error).__name__}: {error}")
            continue
        summary = result.summary
        with open(os.path.join(scratch, config.name, METRICS), newline="") as handle:  # sample prompts hold commas
            rows = list(csv.DictReader(handle))
        per_step = [float(r["step_s"]) for r in rows if r.get("step_s")]
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else ""
        print(f"  {label:15s}: {summary['wall_s'] / steps:.2f} s/step over the run"
              + (f" (last step {per_step[-1]:.2f} s)" if per_step else "")
              + f", {summary.get('oracle_pairs', 0)} oracle pairs, forward/backward rows "
              f"{summary.get('forward_passes', '-')}/{summary.get('backward_passes', '-')}; whole call "
              f"{time.perf_counter() - start:.1f} s{memory}")
    print(json.dumps({"scratch": scratch}))


if __name__ == "__main__":
    main()
