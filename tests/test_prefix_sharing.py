"""Shared prefixes: the prefill plan, and prefix-shared decoding equal to decoding every row alone."""

import pytest
import torch

from rlprompt_math.engines.transformers import TransformersEngine
from rlprompt_math.engines.transformers.prefixes import MIN_SHARED_PREFIX, plan_prefill, prefix_order
from rlprompt_math.templates import Exemplar, Prompt

HEADER = list(range(1000, 1020))


def _question(j, length=12):
    return [2000 + 100 * j + t for t in range(length)]


def _prompt(i, length=3):
    return [3000 + 10 * i + t for t in range(length + i % 3)]  # prompts of different lengths


def test_k_prompts_per_question_group_by_question():
    rows = [HEADER + _question(j) + _prompt(i) for j in range(3) for i in range(4)]
    plan = plan_prefill(rows)
    assert plan.common == len(HEADER)
    assert sorted(members for _, members in plan.groups) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert all(length == 12 for length, _ in plan.groups)
    assert plan.reused_tokens == 20 * 11 + 3 * 3 * 12
    assert plan.computed_tokens + plan.reused_tokens == sum(map(len, rows))


def test_one_prompt_on_many_questions_groups_by_exemplars():
    shots = {p: [4000 + 50 * p + t for t in range(40)] for p in range(2)}
    rows = [HEADER + shots[p] + _question(j) for j in range(5) for p in range(2)]
    plan = plan_prefill(rows)
    assert plan.common == len(HEADER)
    groups = {members: length for length, members in plan.groups}
    assert groups == {(0, 2, 4, 6, 8): 40, (1, 3, 5, 7, 9): 40}


def test_groups_that_save_most_win_over_one_long_chain():
    # Four rows share 10 tokens; two pairs share 40. Pairs save 2 x 40, one group of four 3 x 10.
    base = list(range(500, 510))
    a, b = base + list(range(600, 630)), base + list(range(700, 730))
    rows = [a + [1, 2], a + [3, 4], b + [5, 6], b + [7, 8]]
    plan = plan_prefill(rows)
    assert plan.common == 10
    assert sorted(members for _, members in plan.groups) == [(0, 1), (2, 3)]


def test_each_row_keeps_its_own_tokens_and_short_shares_are_not_grouped():
    rows = [HEADER + _question(0) + [7], HEADER + _question(0) + [8, 9, 10], HEADER + _question(1)[:MIN_SHARED_PREFIX - 1] + [1]]
    plan = plan_prefill(rows, keep=3)
    assert all(len(r) - plan.common - plan.group_length(i) >= 3 for i, r in enumerate(rows))
    assert plan.group_length(2) == 0
    assert plan_prefill(rows, mode="common").groups == ()
    off = plan_prefill(rows, mode="off")
    assert off.common == 0 and off.reused_tokens == 0
    with pytest.raises(ValueError, match="choose one of"):
        plan_prefill(rows, mode="radix")


LONG_HEADER = "You are a careful assistant. You solve math problems exactly and state the final number.\n"
BATCHES = ("chat", "header")


def test_groups_that_cost_more_padding_than_they_save_are_dropped():
    pair = [HEADER + _question(0, 5) + [1], HEADER + _question(0, 5) + [2]]
    loose = HEADER + list(range(5000, 5040))
    plan = plan_prefill(pair + [loose])
    assert plan.groups == () and plan.cost() < plan_prefill(pair + [loose], mode="common").cost() + 1
    shots = [4000 + t for t in range(40)]
    big = [HEADER + shots + _question(j, 4) for j in range(5)]
    small = [HEADER + _question(9, 5) + [1], HEADER + _question(9, 5) + [2]]
    plan = plan_prefill(big + small)
    assert [(length, members) for length, members in plan.groups] == [(40, (0, 1, 2, 3, 4))]


def test_prefix_order_puts_each_group_together_and_sorts_by_length():
    shots = {p: [4000 + 50 * p + t for t in range(40)] for p in range(3)}
    rows = [HEADER + shots[p] + _question(j, 4 + j) for j in range(6) for p in range(3)]
    rows += [HEADER + list(range(7000, 7000 + n)) for n in (3, 70)]  # loose rows, short and long
    order = prefix_order(rows)
    assert sorted(order) == list(range(len(rows)))
    prompt_of = [p for j in range(6) for p in range(3)]
    runs = [prompt_of[i] for i in order if i < 18]
    assert runs == sorted(runs, key=runs.index)  # each prompt's rows are contiguous
    assert order[0] == 18 and order[-1] == 19  # loose rows by length
    within = [[len(rows[i]) for i in order if i < 18 and prompt_of[i] == p] for p in range(3)]
    assert all(lengths == sorted(lengths) for lengths in within)


def _mixed_texts(engine, batch):
    """Batches that mix the shapes: K prompts on one question, one 2-shot prompt on several questions
    (chat), and rows that share nothing but the header; lengths differ, so rows are left-padded. The
    "header" batch renders with a raw template that starts with a long header, so every row also shares
    a common prefix."""
    apples = "Tom has 3 apples and buys 5 more. How many apples?"
    texts = [engine.render(p, apples) for p in ("Answer with a number.", "Think step by step.", "", "Be brief")]
    if batch == "chat":
        shots = Prompt("Be exact.", (Exemplar("What is 12+30?", "12+30 = 42"), Exemplar("What is 9*7?", "9*7 = 63")))
        texts += [engine.render(shots, q) for q in ("What is 36+32?", "What is 15% of 80?", "Solve 2x + 3 = 11.")]
    else:
        texts += [engine.render(p, "Solve for x: 2x + 3 = 11.") for p in ("Be exact.", "Show work, then the answer.")]
    return texts + [engine.render("", "Hi"), engine.render("Show work.", "What is 1000 - 1?")]


@pytest.fixture(scope="module")
def engines(tiny_engine):
    def make(mode, template=None):
        return TransformersEngine(tiny_engine.model, tiny_engine.tokenizer, name="t", prefix_sharing=mode,
                                  template=template)
    return {"chat": {mode: make(mode) for mode in ("off", "common", "groups")},
            "header": {mode: make(mode, LONG_HEADER + "{question}\n{prompt}") for mode in ("off", "common", "groups")}}


@pytest.mark.parametrize("batch", BATCHES)
def test_the_mixed_batches_exercise_every_kind_of_prefix(engines, batch):
    engine = engines[batch]["groups"]
    rows = engine.encode(_mixed_texts(engine, batch))
    plan = plan_prefill(rows)
    assert len(plan.groups) >= 2 and any(plan.group_length(i) == 0 for i in range(len(rows)))
    assert len(set(map(len, rows))) > 3
    assert (plan.common >= MIN_SHARED_PREFIX) == (batch == "header")


@pytest.mark.parametrize("batch", BATCHES)
def test_shared_prefixes_decode_the_same_tokens_and_traces(engines, batch):
    modes = engines[batch]
    texts = _mixed_texts(modes["off"], batch)
    watch = list(range(20, 60))
    results = {}
    for mode, engine in modes.items():
        before = (engine.stats.prefill_tokens, engine.stats.reused_prefix_tokens)
        completions = engine.generate(texts, max_new_tokens=12, use_cache=False, watch=watch)
        results[mode] = (completions, [engine.trace(t) for t in texts],
                         engine.stats.prefill_tokens - before[0], engine.stats.reused_prefix_tokens - before[1])
    reference, reference_traces, total, none = results["off"]
    assert len(set(reference)) > 2
    assert none == 0 and total == sum(map(len, modes["off"].encode(texts)))
    for mode in ("common", "groups"):
        completions, traces, computed, reused = results[mode]
        assert completions == reference, mode
        for got, want in zip(traces, reference_traces):
            assert got.token_ids == want.token_ids
            torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=1e-4)
        assert computed + reused == total
    assert results["common"][3] < results["groups"][3]
    assert (results["common"][3] > 0) == (batch == "header")


@pytest.mark.parametrize("batch", BATCHES)
def test_shared_prefixes_give_the_same_answer_logprobs(engines, batch):
    modes = engines[batch]
    texts = _mixed_texts(modes["off"], batch)
    answers = ["8", "8", "8 apples", "8", "68", "12", "x = 4", "Hello", "999"][:len(texts)]
    reference = modes["off"].answer_logprobs(texts, answers)
    for mode in ("common", "groups"):
        got = modes[mode].answer_logprobs(texts, answers)
        assert got == pytest.approx(reference, abs=1e-4), mode


@pytest.mark.parametrize("batch", BATCHES)
def test_sampling_with_shared_prefixes_is_seeded(engines, batch):
    modes = engines[batch]
    texts = _mixed_texts(modes["off"], batch)
    draws = {mode: engine.generate(texts, max_new_tokens=8, temperature=1.0, seed=3) for mode, engine in modes.items()}
    assert draws["off"] == draws["common"]  # the same rows in the same order draw the same numbers
    # Group prefixes change the order rows are batched in, so a row draws other numbers, but a seed
    # still fixes them.
    assert modes["groups"].generate(texts, max_new_tokens=8, temperature=1.0, seed=3) == draws["groups"]
    assert modes["groups"].generate(texts, max_new_tokens=8, temperature=1.0, seed=4) != draws["groups"]


def test_unknown_sharing_mode_is_refused(tiny_engine):
    with pytest.raises(ValueError, match="prefix_sharing"):
        TransformersEngine(tiny_engine.model, tiny_engine.tokenizer, name="t", prefix_sharing="radix")
