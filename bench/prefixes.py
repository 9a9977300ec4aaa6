"""Shared prefixes in the in-process engine: pairs/s with and without them, in one run, on the same pairs.

    python bench/prefixes.py [--dtype float32] [--questions 32] [--prompts 4] [--shots 4] [--repeats 2]

Three batch shapes, each scored as training scores them (`oracle.score_pairs` with the default rewards
and decoding: greedy, stop at the answer, the likelihood reward read from the decode's trace):

  * bare:   `--questions` generated questions x `--prompts` random 5-word prompts (the prompt after
            the question, so the K prompts of a question share the header and the question);
  * N-shot: the same pairs, each prompt with its own `--shots` exemplar turns before the question
            (training problems, answers in the model's own form `36+32 = 68`), so the questions of a
            prompt share the exemplar turns;
  * step:   the default training step, 8 questions x 8 prompts (`AlgorithmConfig` batch_size and
            prompts_per_question).

and each with the engine's three prefix-sharing modes (`prefixes.SHARING_MODES`): `off` (every row
computes every token), `common` (the prefix that all rows of a prefill share: the engine before group
prefixes) and `groups` (the default). Printed per row: pairs/s of the oracle call (best of `--repeats`),
the same for teacher-forced answer log-probs (`answer_logprobs`, the likelihood path without traces),
prompt tokens computed and reused per pair, and the completions identical to the shape's first row
(`groups`, the default; in fp32 every mode writes the same text). Ratios: each
mode against `common` (before/after), and N-shot against bare pairs/s within a mode.

With `--vllm` (vLLM's CPU build started here in `--dtype`, one replica, prefix caching on: `servers.vllm`)
or `--base-url URL` (a server already running, e.g. `python run.py serve vllm --dtype float32`; repeat it
for replicas), each shape is also scored through that server (`--engine openai`, as training would run
it: the decode goes to the token limit and is cut at the answer here, the log-probs come from `echo`),
and the in-process `groups` row is given as a ratio to it.
"""

from __future__ import annotations

import dataclasses
import resource
import time

import click
import numpy as np
import torch

from common import machine  # bench/ is on the path


def best_of(repeats: int, fn):
    """(result of the last call, the shortest wall time) of `repeats` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


@click.command()
@click.option("--questions", default=32, show_default=True, help="questions in the bare and N-shot batches")
@click.option("--prompts", default=4, show_default=True, help="prompts per question in the bare and N-shot batches")
@click.option("--shots", default=4, show_default=True, help="exemplar turns per prompt in the N-shot batch")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
@click.option("--repeats", default=2, show_default=True, help="timed runs per row (the best is printed)")
@click.option("--seed", default=0, show_default=True)
@click.option("--to-the-limit", is_flag=True,
              help="decode every row to the token limit (no stop at the answer), so the shapes generate the same "
                   "number of tokens and only the prompt's cost differs")
@click.option("--vllm", "with_vllm", is_flag=True,
              help="also score every shape through vLLM's CPU build, started here in --dtype (one replica)")
@click.option("--base-url", "base_urls", multiple=True,
              help="also score every shape through this OpenAI-compatible server (repeat for replicas)")
def main(questions, prompts, shots, dtype, model, repeats, seed, to_the_limit, with_vllm, base_urls):
    import contextlib

    if with_vllm and base_urls:
        raise click.UsageError("give --vllm (start a server here) or --base-url (one already running), not both")
    with contextlib.ExitStack() as stack:
        if with_vllm:
            from rlprompt_math.servers import vllm

            start = time.perf_counter()
            servers = stack.enter_context(vllm.serve(model, dtype=dtype, log=lambda *_: None))
            base_urls = tuple(s.base_url for s in servers)
            print(f"vLLM CPU build, {dtype}, ready in {time.perf_counter() - start:.0f} s at {', '.join(base_urls)}")
        measure(questions, prompts, shots, dtype, model, repeats, seed, to_the_limit, base_urls)


def measure(questions, prompts, shots, dtype, model, repeats, seed, to_the_limit, base_urls):
    from rlprompt_math.config import AlgorithmConfig, RunConfig
    from rlprompt_math.data import generate_problems
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.engines.transformers.prefixes import SHARING_MODES
    from rlprompt_math.exemplars import equation_form
    from rlprompt_math.oracle import decoding_from, score_pairs
    from rlprompt_math.rewards import RewardMix
    from rlprompt_math.templates import Exemplar, Prompt
    from rlprompt_math.vocab import ActionVocab

    torch.manual_seed(seed)
    base = TransformersEngine.load(model, device="cpu", dtype=dtype)
    engines = {mode: TransformersEngine(base.model, base.tokenizer, name=base.name, prefix_sharing=mode)
               for mode in SHARING_MODES}
    if base_urls:
        from rlprompt_math.engines.openai import OpenAIEngine

        engines["served"] = OpenAIEngine(list(base_urls), local=base)
    config = RunConfig()
    decoding = decoding_from(config.oracle)
    if to_the_limit:
        decoding = dataclasses.replace(decoding, stop_at_answer=False)
    print(f"machine: {machine(base)}; model {base.name}; "
          f"decoding: greedy, {decoding.max_new_tokens} new tokens, stop at answer {decoding.stop_at_answer}; "
          f"rewards {', '.join(config.oracle.rewards)}")

    rng = np.random.default_rng(seed)
    vocab = ActionVocab.from_spec(base.tokenizer, "words")
    words = [vocab.decode(rng.integers(0, len(vocab), 5)) for _ in range(max(prompts, 8))]
    problems = generate_problems(questions, seed=seed, kinds=["arithmetic"], difficulty=[1, 2])
    pool = generate_problems(shots * prompts, seed=seed + 1000, kinds=["arithmetic"], difficulty=[1, 2])
    with_shots = [Prompt(words[i], tuple(Exemplar(p.question, equation_form(p.question, p.answer))
                                         for p in pool[i * shots:(i + 1) * shots])) for i in range(prompts)]
    step = AlgorithmConfig()
    shapes = {
        "bare": [(w, p) for p in problems for w in words[:prompts]],
        f"{shots}-shot": [(s, p) for p in problems for s in with_shots],
        "step": [(w, p) for p in problems[:step.batch_size] for w in words[:step.prompts_per_question]],
    }
    print(f"pairs: bare and {shots}-shot {questions} questions x {prompts} prompts; step {step.batch_size} "
          f"questions x {step.prompts_per_question} prompts; best of {repeats} runs; one process, nothing else running")
    print(f"{'shape':8s} {'sharing':8s} {'pairs':>5s} {'oracle pairs/s':>14s} {'logprob pairs/s':>15s} "
          f"{'computed/pair':>13s} {'reused/pair':>11s} {'new tok/pair':>12s} {'same as 1st':>11s}")
    results: dict[tuple[str, str], float] = {}
    for shape, pairs in shapes.items():
        answers = [p.answer for _, p in pairs]
        texts = [base.render(prompt, p.question) for prompt, p in pairs]
        reference = None
        for mode in engines:
            engine = engines[mode]
            rewards = RewardMix(list(config.oracle.rewards), engine=engine)

            def oracle():
                engine._cache.clear()
                engine._traces.clear()
                return score_pairs(engine, rewards, [p for _, p in pairs], [q for q, _ in pairs], decoding)

            engine.generate(texts[:8], max_new_tokens=4, use_cache=False)  # warm-up
            before = (engine.stats.prefill_tokens, engine.stats.reused_prefix_tokens, engine.stats.new_tokens)
            (_, infos), wall = best_of(repeats, oracle)
            # A server's prompt tokens are its own (its prefix cache): they count 0 here.
            computed = (engine.stats.prefill_tokens - before[0]) / repeats
            reused = (engine.stats.reused_prefix_tokens - before[1]) / repeats
            new_tokens = (engine.stats.new_tokens - before[2]) / repeats
            _, lp_wall = best_of(repeats, lambda: engine.answer_logprobs(texts, answers))
            completions = [info["completion"] for info in infos]
            reference = reference or completions
            same = np.mean([a == b for a, b in zip(completions, reference)])
            results[shape, mode] = len(pairs) / wall
            results[shape, mode, "logprobs"] = len(pairs) / lp_wall
            print(f"{shape:8s} {mode:8s} {len(pairs):5d} {len(pairs) / wall:14.2f} {len(pairs) / lp_wall:15.2f} "
                  f"{computed / len(pairs):13.1f} {reused / len(pairs):11.1f} {new_tokens / len(pairs):12.1f} {same:11.1%}",
                  flush=True)
    for shape in shapes:
        print(f"{shape}: groups vs common (before) {results[shape, 'groups'] / results[shape, 'common']:.2f}x, "
              f"groups vs off {results[shape, 'groups'] / results[shape, 'off']:.2f}x")
    for mode in engines:
        print(f"{shots}-shot / bare pairs/s, {mode}: {results[f'{shots}-shot', mode] / results['bare', mode]:.2f}x")
    if base_urls:
        for shape in shapes:
            print(f"{shape}: in-process (groups) / served, oracle {results[shape, 'groups'] / results[shape, 'served']:.2f}x, "
                  f"log-probs {results[shape, 'groups', 'logprobs'] / results[shape, 'served', 'logprobs']:.2f}x")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
