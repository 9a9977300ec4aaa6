"""The embedded GGUF's load paths, in one run on the same inputs: which path transformers takes, its speed
(pairs/s as a training step decodes them) and its greedy agreement with float32.

    python bench/gguf_paths.py [--questions 32] [--seed 11] [--max-new-tokens 48] [--repeats 2]

Paths: bfloat16 with the weights unpacked into dense layers (`GgufConfig(dequantize=True)`, what the engine pins),
bfloat16 as transformers chooses on its own (packed GGUF blocks with float32 kernels where it has a kernel for the
architecture and device, else unpacked), and float32 unpacked. For each: how many linear layers stay packed, load
time, pairs/s (best of `--repeats`, greedy, stopping each row at its stated answer as training does), resident
weight bytes, and against float32: identical completions, same graded correctness, accuracy. Pairs: generator
questions of every kind x the four hand-written prompts, rendered with the chat template.
"""

from __future__ import annotations

import time

import click
import numpy as np
import torch

from common import HAND_WRITTEN, machine

PATHS = (("bfloat16, unpacked (pinned)", torch.bfloat16, True),
         ("bfloat16, transformers' choice", torch.bfloat16, False),
         ("float32, unpacked", torch.float32, True))


def load(dtype, dequantize):
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.engines.transformers.loading import _from_pretrained, default_gguf_path

    path = default_gguf_path()
    start = time.perf_counter()
    model, tokenizer = _from_pretrained(str(path.parent), path.name, dtype=dtype, quant=None,
                                        device=torch.device("cpu"), trust_remote_code=False,
                                        gguf_dequantize=dequantize)
    load_s = time.perf_counter() - start
    packed = sum(type(m).__name__.lower().startswith("gguf") for m in model.modules())
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return TransformersEngine(model, tokenizer, name="SmolLM2-135M-Instruct"), load_s, packed, linear, weight_bytes


@click.command()
@click.option("--questions", default=32, show_default=True)
@click.option("--seed", default=11, show_default=True, help="generator seed of the questions")
@click.option("--max-new-tokens", default=48, show_default=True)
@click.option("--repeats", default=2, show_default=True, help="timed passes per path (the best is printed)")
def main(questions, seed, max_new_tokens, repeats):
    from rlprompt_math.data import generate_problems
    from rlprompt_math.grading import answer_is_complete, grade

    problems = generate_problems(questions, seed=seed)
    prompts = HAND_WRITTEN[1:]  # the four written instructions (the first is no prompt)
    results = {}
    for label, dtype, dequantize in PATHS:
        engine, load_s, packed, linear, weight_bytes = load(dtype, dequantize)
        texts = [engine.render(p, q.question) for q in problems for p in prompts]
        golds = [q.answer for q in problems for _ in prompts]
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            completions = engine.generate(texts, max_new_tokens=max_new_tokens, use_cache=False,
                                          stop_when=answer_is_complete)
            best = min(best, time.perf_counter() - start)
        correct = [grade(c, g).correct for c, g in zip(completions, golds)]
        results[label] = (completions, correct)
        click.echo(f"{label:32s}: {packed} of {linear + packed} linear layers packed, weights "
                   f"{weight_bytes / 2**20:.0f} MiB, load {load_s:.1f} s, {len(texts) / best:.2f} pairs/s "
                   f"({len(texts)} pairs, best of {repeats}), accuracy {np.mean(correct):.1%}")
        if len(results) == 1:
            click.echo(f"machine: {machine(engine)}")
        del engine
    ref_completions, ref_correct = results["float32, unpacked"]
    for label, (completions, correct) in results.items():
        same = np.mean([a == b for a, b in zip(completions, ref_completions)])
        same_grade = np.mean([a == b for a, b in zip(correct, ref_correct)])
        click.echo(f"{label:32s} vs float32: identical completions {same:.1%}, same correctness {same_grade:.1%}")


if __name__ == "__main__":
    main()
