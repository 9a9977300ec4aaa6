"""The transformers engine's throughput against the naive `model.generate` loop, in one run, on the same inputs.

    python bench/throughput.py [--questions 32] [--prompts 4] [--max-new-tokens 32] [--dtype float32] [--batch-size 32]

Generation rewards: K sampled prompts x M generated questions (greedy answers), as one training
step asks. The naive path is a plain loop of `model.generate` over batches of 32 rendered texts
(left-padded, fp32, greedy). Our path runs twice: decoding to the token limit (its completions must
equal the naive ones), and as training runs it, stopping each row at the first line break after a
stated answer (`Decoding.stop_at_answer`; its graded answers are compared with the naive ones).
Printed for each: (prompt, question) pairs/s, generated tokens/s, effective GFLOP/s on real tokens
only (2 x non-embedding parameters per token, padding excluded) as a fraction of a matrix-multiply
peak measured here (the engine's own probe, `loading.matmul_peak`), and the agreement with the naive path.

Likelihood rewards: `answer_logprobs` on the same pairs, against a naive unsorted padded forward.

Peak resident memory of the process is printed at the end.
"""

from __future__ import annotations

import resource
import time

import click
import numpy as np
import torch

from common import machine_without_engine  # bench/ is on the path


def decode_step_ms(engine, batch_sizes, context=60, steps=16) -> dict[int, float]:
    """Milliseconds per KV-cache decode step of the bare model, by batch size (random token ids)."""
    from transformers import DynamicCache

    times = {}
    for rows in batch_sizes:
        ids = torch.randint(100, 1000, (rows, context))
        with torch.inference_mode():
            cache = DynamicCache()
            nxt = engine.model(input_ids=ids, past_key_values=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            start = time.perf_counter()
            for _ in range(steps):
                nxt = engine.model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        times[rows] = (time.perf_counter() - start) / steps * 1000
    return times


def naive_generate(engine, texts, max_new_tokens, batch_size=32):
    tok, model = engine.tokenizer, engine.model
    out, new_tokens = [], 0
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(engine.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in gen[:, enc.input_ids.shape[1]:]:
            ids = [t for t in row.tolist() if t not in (tok.pad_token_id, tok.eos_token_id)]
            new_tokens += len(ids)
            out.append(tok.decode(ids, skip_special_tokens=True))
    return out, new_tokens


def naive_logprobs(engine, texts, answers, batch_size=32):
    tok, model = engine.tokenizer, engine.model
    results = []
    for start in range(0, len(texts), batch_size):
        ctx = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
        tgt = [tok(a, add_special_tokens=False)["input_ids"] for a in answers[start:start + batch_size]]
        rows = [c + t for c, t in zip(ctx, tgt)]
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask,
                                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.float(), -1)
        for k, t in enumerate(tgt):
            n = len(t)
            results.append(sum(logp[k, width - 1 - n + j, t[j]].item() for j in range(n)))
    return results


@click.command()
@click.option("--questions", default=32, show_default=True, help="M questions")
@click.option("--prompts", default=4, show_default=True, help="K prompts per question")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="dtype of our path (the naive path is fp32)")
@click.option("--model", default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="rows per batch on our path (naive: 32)")
@click.option("--decode-steps", default="", help="Only time one decode step at these batch sizes, e.g. 1,8,32,64,128.")
def main(questions, prompts, max_new_tokens, dtype, model, seed, batch_size, decode_steps):
    from rlprompt_math.data import generate_problems
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.engines.transformers.loading import matmul_peak
    from rlprompt_math.vocab import ActionVocab

    print(f"machine: {machine_without_engine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    engine = TransformersEngine.load(model, device="cpu", dtype="float32")
    if decode_steps:
        for rows, ms in decode_step_ms(engine, [int(b) for b in decode_steps.split(",")]).items():
            print(f"decode step, {rows:4d} rows: {ms:7.1f} ms ({rows / ms * 1000:6.0f} tokens/s)")
        return
    problems = generate_problems(questions, seed=seed, kinds=["arithmetic"], difficulty=[1, 2])
    vocab = ActionVocab.from_spec(engine.tokenizer, "words")
    rng = np.random.default_rng(seed)
    prompt_texts = [vocab.decode(rng.integers(0, len(vocab), 5)) for _ in range(prompts)]
    # As a training step asks: the K prompts of each question together.
    texts = [engine.render(p, q.question) for q in problems for p in prompt_texts]
    real_prompt_tokens = sum(len(e) for e in engine.encode(texts))
    params = sum(p.numel() for n, p in engine.model.named_parameters() if "embed" not in n)
    peak = matmul_peak(torch.float32, repeats=10) / 1e9  # GFLOP/s, 1024 x 1024
    print(f"model {engine.name}: {params / 1e6:.0f}M non-embedding parameters; {len(texts)} pairs "
          f"({questions} questions x {prompts} prompts), {real_prompt_tokens} real prompt tokens; "
          f"fp32 matmul peak {peak:.0f} GFLOP/s")

    def flops(new_tokens):  # forward FLOPs on real tokens: prompt + generated
        return 2 * params * (real_prompt_tokens + new_tokens) / 1e9

    start = time.perf_counter()
    naive, naive_tokens = naive_generate(engine, texts, max_new_tokens)
    naive_s = time.perf_counter() - start
    print(f"{'naive generate':20s}: {len(texts) / naive_s:6.2f} pairs/s {naive_tokens / naive_s:7.1f} tok/s "
          f"{flops(naive_tokens) / naive_s:6.1f} GFLOP/s ({flops(naive_tokens) / naive_s / peak:.0%} of peak) "
          f"[{naive_s:.1f} s]")

    fast_engine = engine if dtype == "float32" else TransformersEngine(
        engine.model.to(getattr(torch, dtype)), engine.tokenizer, name=engine.name)
    from rlprompt_math.grading import answer_is_complete, grade

    golds = [q.answer for q in problems for _ in prompt_texts]
    naive_grades = [grade(c, g) for c, g in zip(naive, golds)]
    for label, stop_when in (("ours, to the limit", None), ("ours, stop at answer", answer_is_complete)):
        tokens_before = fast_engine.stats.new_tokens
        start = time.perf_counter()
        ours = fast_engine.generate(texts, max_new_tokens=max_new_tokens, use_cache=False, batch_size=batch_size,
                                 stop_when=stop_when)
        ours_s = time.perf_counter() - start
        ours_tokens = fast_engine.stats.new_tokens - tokens_before
        print(f"{label:20s}: {len(texts) / ours_s:6.2f} pairs/s {ours_tokens / ours_s:7.1f} tok/s "
              f"{flops(ours_tokens) / ours_s:6.1f} GFLOP/s ({flops(ours_tokens) / ours_s / peak:.0%} of peak) "
              f"[{ours_s:.1f} s, {ours_tokens} new tokens vs naive {naive_tokens}]")
        grades = [grade(c, g) for c, g in zip(ours, golds)]
        identical = np.mean([a == b for a, b in zip(naive, ours)])
        same_answer = np.mean([a.extracted == b.extracted for a, b in zip(naive_grades, grades)])
        same_grade = np.mean([a.correct == b.correct for a, b in zip(naive_grades, grades)])
        acc_naive = np.mean([g.correct for g in naive_grades])
        acc_ours = np.mean([g.correct for g in grades])
        print(f"    speed-up {naive_s / ours_s:.2f}x; identical completions {identical:.1%}, same extracted "
              f"answer {same_answer:.1%}, same correctness {same_grade:.1%}; accuracy naive {acc_naive:.1%} "
              f"vs ours {acc_ours:.1%}")

    answers = [p.answer for p in problems for _ in prompt_texts]
    start = time.perf_counter()
    ref = naive_logprobs(engine, texts, answers)
    naive_lp_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = fast_engine.answer_logprobs(texts, answers)
    ours_lp_s = time.perf_counter() - start
    lp_tokens = real_prompt_tokens + sum(len(engine.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    lp_flops = 2 * params * lp_tokens / 1e9
    print(f"likelihood naive: {len(texts) / naive_lp_s:6.1f} pairs/s {lp_flops / naive_lp_s:6.1f} GFLOP/s "
          f"({lp_flops / naive_lp_s / peak:.0%} of peak)")
    print(f"likelihood ours : {len(texts) / ours_lp_s:6.1f} pairs/s {lp_flops / ours_lp_s:6.1f} GFLOP/s "
          f"({lp_flops / ours_lp_s / peak:.0%} of peak); max |difference| "
          f"{max(abs(a - b) for a, b in zip(ref, fast)):.2e}")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
