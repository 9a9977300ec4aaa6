"""Peak resident memory and speed of the transformers engine by dtype on this CPU, each dtype in a fresh process.

    python bench/dtype_memory.py [--pairs 64] [--max-new-tokens 32] [--threads 2] [--random-weights DIR]

For each of float32 and bfloat16 (and bfloat16 with oneDNN's primitive cache off, with oneDNN off
altogether, and with glibc's allocator told to give freed memory back): load the default model (or DIR's architecture with random weights), then greedy-generate
`--pairs` rendered questions, printing the process's peak resident memory after loading and after
generating, and pairs/s. This is how `dtype="auto"` was decided for CPUs (issue 13): run it on the CPU
in question, since bf16 takes other kernels where the CPU has AVX512-BF16 or AMX.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import click

from common import machine_without_engine  # bench/ is on the path

VARIANTS = {
    "float32": ("float32", {}),
    "bfloat16": ("bfloat16", {}),
    "bfloat16, oneDNN primitive cache 0": ("bfloat16", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}),
    "bfloat16, oneDNN off": ("bfloat16", {"RLPROMPT_MKLDNN_OFF": "1"}),
    # glibc keeps freed blocks below its mmap threshold in its arenas; these return them to the system.
    "bfloat16, malloc mmap threshold 1 MiB": ("bfloat16", {"MALLOC_MMAP_THRESHOLD_": str(2**20)}),
    "bfloat16, one malloc arena": ("bfloat16", {"MALLOC_ARENA_MAX": "1"}),
}


def child(dtype: str, pairs: int, max_new_tokens: int, random_weights: str | None) -> dict:
    import torch

    if os.environ.get("RLPROMPT_MKLDNN_OFF"):
        torch.backends.mkldnn.enabled = False
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.engines.transformers.loading import load_random_weights

    start = time.perf_counter()
    if random_weights:
        model, tokenizer, name = load_random_weights(random_weights, device="cpu", dtype=dtype)
        engine = TransformersEngine(model, tokenizer, name=name)
    else:
        engine = TransformersEngine.load(None, device="cpu", dtype=dtype)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    load_s = time.perf_counter() - start
    texts = [engine.render("Answer with only the final number.", f"What is {17 * i % 97}+{31 * i % 89}?")
             for i in range(pairs)]
    start = time.perf_counter()
    engine.generate(texts, max_new_tokens=max_new_tokens, use_cache=False)
    wall = time.perf_counter() - start
    return {"load_s": load_s, "peak_after_load_gb": loaded, "pairs_per_s": pairs / wall,
            "tokens_per_s": engine.stats.new_tokens / wall,
            "peak_after_generate_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


@click.command()
@click.option("--pairs", default=64, show_default=True)
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch threads (the dev machines have 2 cores).")
@click.option("--random-weights", default=None, metavar="DIR", help="DIR's config and tokenizer, random weights.")
@click.option("--variants", default=";".join(VARIANTS), show_default=True, help="Semicolon-separated, from the list above.")
@click.option("--child-dtype", default=None, hidden=True)
def main(pairs, max_new_tokens, threads, random_weights, variants, child_dtype):
    if child_dtype:
        print(json.dumps(child(child_dtype, pairs, max_new_tokens, random_weights)))
        return
    print(f"machine: {machine_without_engine()}; {threads} threads; {pairs} pairs, "
          f"{max_new_tokens} new tokens" + (f"; random weights from {random_weights}" if random_weights else ""))
    for label in variants.split(";"):
        dtype, extra_env = VARIANTS[label]
        env = {**os.environ, **extra_env, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, __file__, "--child-dtype", dtype, "--pairs", str(pairs),
                   "--max-new-tokens", str(max_new_tokens)] + (["--random-weights", random_weights] if random_weights else [])
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"  {label}: failed: {done.stderr[-500:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {label:36s}: peak {r['peak_after_load_gb']:.2f} GB after load, {r['peak_after_generate_gb']:.2f} GB "
              f"after generating; {r['pairs_per_s']:.1f} pairs/s, {r['tokens_per_s']:.0f} tokens/s; load {r['load_s']:.1f} s")


if __name__ == "__main__":
    main()
