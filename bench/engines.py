"""The engines side by side, in one run, on the same (prompt, question) pairs.

    python bench/engines.py                       # CPU: the transformers engine and llama-server
    python bench/engines.py --vllm                # ... and vLLM's CPU build (fp32, bf16; 1 and 2 replicas)
    python bench/engines.py --device cuda         # a GPU: the transformers engine in bf16
    python bench/engines.py --device cuda --random-weights DIR   # no model file there (see below)

The pairs: `--questions` generated problems x the hand-written reference prompts, greedy, decoded to
`--max-new-tokens` (no stop-at-answer: a server cannot run it, so every engine decodes the same length).

CPU rows, each timed twice (the same pairs; the greedy cache is off):
  * transformers: this project's in-process engine (fp32, batch 64), and its teacher-forced answer
    log-probabilities (the likelihood rewards) on the same pairs;
  * llama-server serving the Q4_1 file as shipped, and an F16 re-export of it, 16 slots with
    continuous batching, 16 requests in flight (one prompt each, as clients send them);
  * two llama-server processes with one thread each (data parallel, the `--base-url` list) against one
    with both threads;
  * with --vllm, vLLM's CPU build (`rlprompt_math.servers.vllm`, prefix caching on) in fp32, and in bf16
    where the CPU has fast bf16, each beside the in-process engine in the same dtype, and two fp32
    replicas with one thread each; generation and teacher-forced log-probs (`echo`) on the same pairs.
"same completion" compares each engine's text with the transformers engine's.

GPU rows: the transformers engine on CUDA in bf16 (the `auto` dtype there), pairs/s and generated
tokens/s at each of `--batch-sizes` (on batch questions x the reference prompts, all distinct pairs),
and the fraction of the GPU's bf16 matrix-multiply peak measured in the same run (2 x parameters x
generated tokens; prefill not counted). `--random-weights DIR` builds the
model from DIR's config.json and tokenizer with random weights, for a machine without the GGUF file
(a random model writes to the token limit, so its tokens/s is the comparable figure). Where llama.cpp
or the model file is missing, those rows say so.
"""

from __future__ import annotations

import os
import resource
import time

import click
import torch

from common import machine_without_engine  # bench/ is on the path
from rlprompt_math.config import REFERENCE_PROMPTS


def pairs(num_questions: int, seed: int = 0):
    from rlprompt_math.data import generate_problems

    problems = generate_problems(num_questions, seed=seed, kinds=["arithmetic"], difficulty=2)
    return [(prompt, p) for p in problems for prompt in REFERENCE_PROMPTS]


def timed_generate(engine, texts, max_new_tokens, **kwargs) -> tuple[list[str], float, int]:
    tokens = engine.stats.new_tokens
    start = time.perf_counter()
    out = engine.generate(texts, max_new_tokens=max_new_tokens, use_cache=False, **kwargs)
    return out, time.perf_counter() - start, engine.stats.new_tokens - tokens


def same(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def gpu_rows(engine, max_new_tokens: int, batch_sizes: tuple[int, ...]) -> None:
    from rlprompt_math.engines.transformers.loading import matmul_peak

    params = sum(p.numel() for p in engine.model.parameters())
    peak = matmul_peak(torch.bfloat16, rows=8192, width=8192, device="cuda", repeats=10, warmup=3) / 1e12  # TFLOP/s
    print(f"GPU: {torch.cuda.get_device_name()}, bf16 matmul peak measured here {peak:.0f} TFLOP/s; "
          f"model {engine.name}, {params / 1e6:.0f}M parameters, {engine.dtype}")
    for batch in batch_sizes:
        # Distinct pairs (identical greedy rows are decoded once), a batch per reference prompt.
        texts = [engine.render(prompt, problem.question) for prompt, problem in pairs(batch)]
        engine.generate(texts[:8], max_new_tokens=4, use_cache=False)  # warm-up
        for attempt in (1, 2):
            torch.cuda.synchronize()
            _, wall, tokens = timed_generate(engine, texts, max_new_tokens, batch_size=batch)
            tflops = 2 * params * tokens / wall / 1e12
            print(f"  transformers cuda, batch {batch:4d}, run {attempt}: {len(texts)} pairs, {len(texts) / wall:7.1f} pairs/s, "
                  f"{tokens / wall:8.0f} tokens/s, {tflops:.2f} TFLOP/s = {tflops / peak:.2%} of the bf16 peak")
        for attempt in (1, 2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            engine.answer_logprobs(texts, ["42"] * len(texts), batch_size=batch)
            torch.cuda.synchronize()
            print(f"  teacher-forced answer log-probs, batch {batch}, run {attempt}: "
                  f"{len(texts) / (time.perf_counter() - start):.0f} pairs/s")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def vllm_rows(engines: dict, texts, max_new_tokens: int, completions: dict) -> None:
    """vLLM's CPU build in each dtype of `engines` (one replica; the in-process engine in that dtype beside
    it), and two replicas with one thread each in fp32; generation and teacher-forced log-probs."""
    from rlprompt_math.engines.openai import OpenAIEngine
    from rlprompt_math.servers import vllm

    def rows(label, servers, engine, ours):
        served = OpenAIEngine([s.base_url for s in servers], local=engine, served_model=vllm.SERVED_NAME)
        for attempt in (1, 2):
            out, wall, tokens = timed_generate(served, texts, max_new_tokens)
            print(f"  {label}, run {attempt}: {len(texts) / wall:5.1f} pairs/s, {tokens / wall:5.0f} tokens/s, "
                  f"same completion as transformers ({engine.dtype}) {same(out, ours):.0%}")
        for attempt in (1, 2):
            start = time.perf_counter()
            served.answer_logprobs(texts, ["42"] * len(texts))
            print(f"  {label} teacher-forced answer log-probs (echo), run {attempt}: "
                  f"{len(texts) / (time.perf_counter() - start):5.1f} pairs/s")

    for dtype, engine in engines.items():
        start = time.perf_counter()
        with vllm.serve(dtype=dtype, log=lambda *_: None) as servers:
            print(f"  (vLLM {dtype} ready in {time.perf_counter() - start:.0f} s)")
            rows(f"vLLM CPU {dtype}, 1 replica", servers, engine, completions[dtype])
    with vllm.serve(dtype="float32", replicas=2, log=lambda *_: None) as servers:
        rows("vLLM CPU float32, 2 replicas x 1 thread", servers, engines["float32"], completions["float32"])


def cpu_rows(engine, texts, max_new_tokens: int, slots: int, skip_llama: bool) -> list[str]:
    from rlprompt_math.servers import llama_cpp
    from rlprompt_math.engines.transformers.loading import default_gguf_path
    from rlprompt_math.engines.openai import OpenAIEngine

    ours = []
    for attempt in (1, 2):
        out, wall, tokens = timed_generate(engine, texts, max_new_tokens, batch_size=64)
        ours = ours or out
        print(f"  transformers (in process, {engine.dtype}, batch 64), run {attempt}: {len(texts) / wall:5.1f} pairs/s, "
              f"{tokens / wall:5.0f} tokens/s")
    for attempt in (1, 2):
        start = time.perf_counter()
        engine.answer_logprobs(texts, ["42"] * len(texts))
        print(f"  transformers teacher-forced answer log-probs ({engine.dtype}), run {attempt}: "
              f"{len(texts) / (time.perf_counter() - start):5.1f} pairs/s")
    if skip_llama:
        return ours
    if not llama_cpp.is_built():
        print("  llama-server: not built (python -m rlprompt_math.servers.llama_cpp build); rows skipped")
        return ours
    shipped = default_gguf_path()
    f16 = llama_cpp.export_f16(shipped, log=lambda *_: None)
    threads = os.cpu_count() or 1

    def served_rows(label, urls):
        served = OpenAIEngine(urls, local=engine, served_model="smollm2", prompts_per_request=1,
                              concurrency=max(1, slots // len(urls)))
        for attempt in (1, 2):
            out, wall, tokens = timed_generate(served, texts, max_new_tokens)
            print(f"  {label}, run {attempt}: {len(texts) / wall:5.1f} pairs/s, {tokens / wall:5.0f} tokens/s, "
                  f"same completion as transformers {same(out, ours):.0%}")

    for label, gguf in (("Q4_1 file as shipped", shipped), ("F16 re-export", f16)):
        with llama_cpp.serve(gguf, slots=slots, threads=threads) as server:
            served_rows(f"llama-server {label}, {slots} slots, {threads} threads", [server.base_url])
    with llama_cpp.serve(f16, slots=slots // 2, threads=1) as a, llama_cpp.serve(f16, slots=slots // 2, threads=1) as b:
        served_rows(f"2 x llama-server F16, {slots // 2} slots and 1 thread each", [a.base_url, b.base_url])
    with llama_cpp.serve(f16, slots=slots, threads=1) as one:
        served_rows(f"1 x llama-server F16, {slots} slots, 1 thread", [one.base_url])
    return ours


@click.command()
@click.option("--questions", default=32, show_default=True,
              help=f"Problems; x {len(REFERENCE_PROMPTS)} reference prompts = pairs.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu (with llama-server rows) or cuda.")
@click.option("--dtype", default="auto", show_default=True)
@click.option("--random-weights", "random_weights", default=None, metavar="DIR",
              help="Build the model from DIR's config and tokenizer with random weights.")
@click.option("--slots", default=16, show_default=True, help="llama-server parallel slots and requests in flight.")
@click.option("--batch-sizes", default="64,256", show_default=True, help="GPU batch sizes.")
@click.option("--skip-llama", is_flag=True, help="No llama-server rows.")
@click.option("--vllm", "with_vllm", is_flag=True,
              help="vLLM rows (its CPU build, installed on first use): fp32, and bf16 where the CPU has it, beside the "
                   "in-process engine in the same dtype; two replicas in fp32.")
def main(questions, max_new_tokens, device, dtype, random_weights, slots, batch_sizes, skip_llama, with_vllm):
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.engines.transformers.loading import load_random_weights

    print(f"machine: {machine_without_engine()}, {torch.get_num_threads()} threads")
    if random_weights:
        model, tokenizer, name = load_random_weights(random_weights, device=device, dtype=dtype)
        engine = TransformersEngine(model, tokenizer, name=name)
    else:
        engine = TransformersEngine.load(None, device=device, dtype=dtype)
    if engine.device.type == "cuda":
        print(f"greedy, {max_new_tokens} new tokens; per batch size, that many questions x "
              f"{len(REFERENCE_PROMPTS)} reference prompts")
        gpu_rows(engine, max_new_tokens, tuple(int(b) for b in batch_sizes.split(",")))
    else:
        texts = [engine.render(prompt, problem.question) for prompt, problem in pairs(questions)]
        print(f"{len(texts)} pairs ({questions} questions x {len(REFERENCE_PROMPTS)} reference prompts), greedy, "
              f"{max_new_tokens} new tokens")
        ours = cpu_rows(engine, texts, max_new_tokens, slots, skip_llama)
        if with_vllm:
            from rlprompt_math.engines.transformers.loading import cpu_has_fast_bf16

            engines = {"float32": engine if engine.dtype == torch.float32 else TransformersEngine.load(None, dtype="float32")}
            if cpu_has_fast_bf16():
                engines["bfloat16"] = engine if engine.dtype == torch.bfloat16 else TransformersEngine.load(
                    None, dtype="bfloat16")
            completions = {}
            for name, each in engines.items():
                completions[name] = ours if each is engine else cpu_rows(each, texts, max_new_tokens, slots, True)
            vllm_rows(engines, texts, max_new_tokens, completions)
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
