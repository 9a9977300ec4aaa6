"""Load the embedded default model offline and answer 16 questions; print load time and tokens/s.

    python bench/load_default.py [--dtype float32|bfloat16|auto] [--compare-dtypes]

`--compare-dtypes` also times one teacher-forced forward pass over 32 x 64 tokens in fp32 and bf16,
and a 1024 x 1024 matrix multiply in each, the measurements behind `dtype="auto"` (bf16 only where
this CPU runs it faster).
"""

import time

import click
import torch

from common import machine_without_engine  # bench/ is on the path

QUESTIONS = [f"What is {a}+{b}?" for a, b in [(2, 3), (36, 32), (7, 8), (120, 45)]] + [
    f"What is {a}*{b}?" for a, b in [(6, 7), (12, 3), (9, 9), (15, 4)]] + [
    f"What is {a}-{b}?" for a, b in [(50, 8), (100, 37), (9, 12), (64, 16)]] + [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A book costs $12. How much do 4 books cost?", "What is half of 90?", "What is 208/13?"]


@click.command()
@click.option("--dtype", default="auto", show_default=True)
@click.option("--max-new-tokens", default=48, show_default=True)
@click.option("--compare-dtypes", is_flag=True, help="Also time fp32 vs bf16 forward passes.")
def main(dtype, max_new_tokens, compare_dtypes):
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.engines.transformers.loading import cpu_has_fast_bf16, matmul_peak

    print(f"machine: {machine_without_engine()}, "
          f"threads {torch.get_num_threads()}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    start = time.perf_counter()
    engine = TransformersEngine.load(None, device="cpu", dtype=dtype)
    print(f"load: {time.perf_counter() - start:.1f} s  (model {engine.name}, dtype {engine.dtype})")
    texts = [engine.render("Answer with only the final number.", q) for q in QUESTIONS]
    start = time.perf_counter()
    answers = engine.generate(texts, max_new_tokens=max_new_tokens, use_cache=False)
    elapsed = time.perf_counter() - start
    tokens = engine.stats.new_tokens
    print(f"generate: 16 questions, {tokens} new tokens in {elapsed:.1f} s = {tokens / elapsed:.0f} tokens/s")
    for q, a in zip(QUESTIONS[:4], answers[:4]):
        print(f"  {q!r} -> {a!r}")
    if compare_dtypes:
        ids = torch.randint(0, 49000, (32, 64))
        for dt in (torch.float32, torch.bfloat16):
            model = engine.model.to(dt)
            with torch.inference_mode():
                model(ids[:4])
                start = time.perf_counter()
                model(ids)
                el = time.perf_counter() - start
            print(f"forward 32x64 {str(dt):15s}: {32 * 64 / el:7.0f} tokens/s")
        print(f"matmul peak 1024x1024: fp32 {matmul_peak(torch.float32, repeats=10) / 1e9:.0f} GFLOP/s, "
              f"bf16 {matmul_peak(torch.bfloat16, repeats=2) / 1e9:.1f} GFLOP/s")
        print(f"cpu_has_fast_bf16() = {cpu_has_fast_bf16()}")


if __name__ == "__main__":
    main()
