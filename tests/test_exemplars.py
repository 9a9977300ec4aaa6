"""Exemplars: the answer forms, a pool drawn from the training split only, the completion form, the
few-shot reference, and prompts with exemplars on the scoring path (rendered as earlier chat turns)."""

import json

import pytest

from rlprompt_math.config import ANSWER_FORMS, GENERATOR_KINDS
from rlprompt_math.data import Problem, generate_problems, problem_id, split_problems
from rlprompt_math.exemplars import (ExemplarPool, completion_cut, equation_form, expression_of, few_shot_reference,
                                     reference_name, spaced_form)
from rlprompt_math.oracle import Decoding, score_pairs
from rlprompt_math.rewards import RewardMix
from rlprompt_math.templates import Exemplar, Prompt


def _problem(question, answer, pid=None):
    return Problem(pid or problem_id(question), question, answer, "test")


@pytest.mark.parametrize("question, answer, expected", [
    ("What is 36+32?", "68", "36+32 = 68"),                             # arithmetic
    ("What is 378/14?", "27", "378/14 = 27"),
    ("What is 3 + 4 * 5?", "23", "3 + 4 * 5 = 23"),                     # order of operations
    ("What is (3 + 4) * 5?", "35", "(3 + 4) * 5 = 35"),
    ("What is 1/2 + 3/4?", "1.25", "1/2 + 3/4 = 1.25"),                 # fractions
    ("What is 1.5 - 4.25?", "-2.75", "1.5 - 4.25 = -2.75"),             # decimals
    ("What is 20% of 40?", "8", "20% of 40 = 8"),                       # percentages
    ("Ava has 3 apples and gets 5 more. How many apples does Ava have now?", "8", "8"),  # word problems: bare
    ("Ben has $50 and buys 3 books at $7 each. How many dollars are left?", "29", "29"),
    ("Solve for x: 3x + 4 = 10.", "2", "x = 2"),                        # linear equation
    ("Solve for x: -7x - 14 = -322.", "44", "x = 44"),
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?", "72", "72"),  # GSM8K text: bare
    ("What is the capital of France?", "Paris", "Paris"),               # no arithmetic after "What is"
    ("What is 5?", "5", "5"),                                           # a number is no expression
])
def test_equation_form(question, answer, expected):
    assert equation_form(question, answer) == expected


@pytest.mark.parametrize("question, answer, expected", [
    ("What is 36+32?", "68", "36 + 32 = 68"),                           # the default model's own spacing
    ("What is 6-35?", "-29", "6 - 35 = -29"),
    ("What is 3 + 4 * 5?", "23", "3 + 4 * 5 = 23"),                     # already spaced: unchanged
    ("What is (3+4)*5?", "35", "(3 + 4) * 5 = 35"),                     # after a bracket: an operator
    ("What is -3*-4?", "12", "-3 * -4 = 12"),                           # a leading or doubled minus is a sign
    ("What is 1.5-4.25?", "-2.75", "1.5 - 4.25 = -2.75"),
    ("What is 20% of 40?", "8", "20% of 40 = 8"),                       # nothing to space
    ("Solve for x: 3x+4 = 10.", "2", "x = 2"),
    ("Ava has 3 apples and gets 5 more. How many apples does Ava have now?", "8", "8"),
])
def test_spaced_form(question, answer, expected):
    assert spaced_form(question, answer) == expected


def test_equation_form_on_every_generator_kind():
    """Each generator kind: the expression kinds copy the question's span (never computed), the word
    problems give the bare answer, the linear equations `x = answer`."""
    expression_kinds = {"arithmetic", "order_of_operations", "fractions", "decimals", "percentages"}
    for kind in GENERATOR_KINDS:
        for p in generate_problems(15, seed=3, kinds=[kind], difficulty=[1, 2, 3]):
            form = equation_form(p.question, p.answer)
            if kind in expression_kinds or (kind == "powers_roots" and p.question[8].isdigit()):  # `6^4`, not `(-2)^3`
                span = p.question[len("What is "):-1]
                assert expression_of(p.question) == span and form == f"{span} = {p.answer}", (kind, p.question)
            elif kind == "linear_equation":
                assert form == f"x = {p.answer}", p.question
            else:
                assert expression_of(p.question) is None and form == p.answer, (kind, p.question)


def test_pool_draws_from_training_split_only():
    problems = generate_problems(300, seed=0, kinds=["arithmetic"], difficulty=[1, 2])
    splits = split_problems(problems, seed=0)
    held_out = splits["validation"] + splits["test"]
    train_ids = {p.id for p in splits["train"]}
    for seed in range(5):
        pool = ExemplarPool.from_splits(splits["train"], held_out, size=16, seed=seed)
        assert len(pool) == 16 and len(set(p.id for p in pool.problems)) == 16
        assert {p.id for p in pool.problems} <= train_ids
        assert not {p.id for p in pool.problems} & {p.id for p in held_out}
    same = ExemplarPool.from_splits(splits["train"], held_out, size=16, seed=1)
    assert same.problems == ExemplarPool.from_splits(splits["train"], held_out, size=16, seed=1).problems
    with pytest.raises(ValueError, match="exemplar pool of 0"):
        ExemplarPool.from_splits(splits["train"], held_out, size=0)
    with pytest.raises(ValueError, match="training problems"):
        ExemplarPool.from_splits(splits["train"], held_out, size=len(splits["train"]) + 1)


def test_pool_refuses_a_problem_that_is_also_held_out():
    train = [_problem(f"What is {i}+1?", str(i + 1)) for i in range(10)]
    planted = train[4]
    # The same problem under the same id, and the same question under another id (a dataset's own ids).
    for held in (planted, _problem("  what is 4+1? ", "5", pid="row-17")):
        held_out = [_problem("What is 99+1?", "100"), held]
        with pytest.raises(ValueError, match="also validation or test"):
            ExemplarPool.from_splits(train, held_out, size=len(train), seed=0)
    # Drawn without the planted problem, the pool is fine: the check is on what a prompt can show.
    pool = ExemplarPool.from_splits(train[:4] + train[5:], [planted], size=9, seed=0)
    assert planted not in pool.problems


def test_pool_forms_and_round_trip():
    problems = [_problem("What is 36+32?", "68"), _problem("Solve for x: 2x + 3 = 11.", "4"),
                _problem("Ava has 3 apples and gets 5 more. How many apples does Ava have now?", "8")]
    pool = ExemplarPool(problems)
    assert [pool.exemplar(i, "bare").answer for i in range(3)] == ["68", "4", "8"]
    assert [pool.exemplar(i, "equation").answer for i in range(3)] == ["36+32 = 68", "x = 4", "8"]
    assert pool.exemplar(0, "equation") == Exemplar("What is 36+32?", "36+32 = 68")
    assert [pool.exemplar(i, "spaced").answer for i in range(3)] == ["36 + 32 = 68", "x = 4", "8"]
    with pytest.raises(ValueError, match="collect_completions"):
        pool.exemplar(0, "completion")
    with pytest.raises(ValueError, match="unknown answer form"):
        pool.exemplar(0, "latex")
    restored = ExemplarPool.from_dict(json.loads(json.dumps(pool.to_dict())))
    assert restored.problems == pool.problems and restored.forms_text == pool.forms_text
    with pytest.raises(ValueError, match="2 completion answers for 3"):
        ExemplarPool(problems, {"completion": ["a", "b"]})


class FakeEngine:
    """Answers from a table; records what it was asked (the completion form needs only render and generate)."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def render(self, prompt, question):
        assert prompt == ""  # completions are collected with no prompt
        return f"<{question}>"

    def generate(self, texts, **settings):
        self.calls.append((list(texts), settings))
        return [self.answers[text[1:-1]] for text in texts]


def test_collect_completions_keeps_only_correct_ones():
    problems = [_problem("What is 36+32?", "68"), _problem("What is 7*6?", "42"),
                _problem("Ava has 3 apples and gets 5 more. How many apples does Ava have now?", "8"),
                _problem("What is 9-4?", "5")]
    engine = FakeEngine({"What is 36+32?": "36 + 32 = 68\nThe sum is large.",
                         "What is 7*6?": "7 * 6 = 48\n",                          # wrong: the spaced form
                         problems[2].question: "She has 3 + 5 = 8 apples. So the answer is \\boxed{8}.",
                         "What is 9-4?": "I do not know."})                       # no answer: the spaced form
    pool = ExemplarPool(problems)
    counts = pool.collect_completions(engine, Decoding(max_new_tokens=12))
    assert counts == {"oracle_pairs": 4, "correct": 2}
    assert len(engine.calls) == 1 and len(engine.calls[0][0]) == 4  # one batched call
    settings = engine.calls[0][1]
    assert settings["temperature"] == 0.0 and settings["max_new_tokens"] == 12
    assert pool.forms_text["completion"] == ["36 + 32 = 68", "7 * 6 = 42",
                                             "She has 3 + 5 = 8 apples. So the answer is \\boxed{8}",
                                             "9 - 4 = 5"]
    assert pool.exemplar(0, "completion") == Exemplar("What is 36+32?", "36 + 32 = 68")
    # Filled once: a second call (or a restored pool) asks the engine for nothing.
    assert pool.collect_completions(engine, Decoding())["oracle_pairs"] == 0 and len(engine.calls) == 1
    restored = ExemplarPool.from_dict(json.loads(json.dumps(pool.to_dict())))
    assert restored.collect_completions(FakeEngine({}), Decoding())["oracle_pairs"] == 0
    assert restored.forms_text["completion"] == pool.forms_text["completion"]


def test_completion_cut():
    assert completion_cut("36+32 = 68\nNext we", "68") == "36+32 = 68"
    assert completion_cut("The answer is 68.", "68") == "The answer is 68"
    assert completion_cut("So 60 + 8 = 68, as asked", "68") == "So 60 + 8 = 68"
    assert completion_cut("It is 70.", "68") is None


def test_few_shot_reference_is_the_first_k_training_problems():
    train = split_problems(generate_problems(200, seed=0), seed=0)["train"]
    prompt = few_shot_reference(train, 2)  # answers in the model's own (spaced) form
    assert prompt == Prompt("", (Exemplar(train[0].question, spaced_form(train[0].question, train[0].answer)),
                                 Exemplar(train[1].question, spaced_form(train[1].question, train[1].answer))))
    assert few_shot_reference(train, 2, form="equation").exemplars[0].answer == equation_form(train[0].question,
                                                                                               train[0].answer)
    assert [e.answer for e in few_shot_reference(train, 3, form="bare").exemplars] == [p.answer for p in train[:3]]
    with pytest.raises(ValueError, match="bare or as equations"):
        few_shot_reference(train, 2, form="completion")
    with pytest.raises(ValueError, match="needs 3 training problems"):
        few_shot_reference(train[:2], 3)
    assert reference_name(2) == "2-shot (first 2 training problems, spaced form)"
    assert set(ANSWER_FORMS) == {"bare", "equation", "spaced", "completion"}


def _captured_texts(engine, monkeypatch):
    seen = []
    generate = engine.generate

    def capture(texts, **kwargs):
        seen.extend(texts)
        return generate(texts, **kwargs)

    monkeypatch.setattr(engine, "generate", capture)
    return seen


def test_score_pairs_renders_exemplars_as_earlier_chat_turns(tiny_engine, monkeypatch):
    seen = _captured_texts(tiny_engine, monkeypatch)
    problem = _problem("What is 5+6?", "11")
    prompt = Prompt("Be exact.", (Exemplar("What is 36+32?", "36+32 = 68"), Exemplar("What is 2*3?", "2*3 = 6")))
    _, infos = score_pairs(tiny_engine, RewardMix(["correct"]), [problem, problem], [prompt, "Be exact."], Decoding(4))
    assert infos[0]["prompt"] == str(prompt) and infos[1]["prompt"] == "Be exact."
    json.dumps(infos)  # JSON-safe
    text = seen[0]
    turns = ["<|im_start|>user\nWhat is 36+32?<|im_end|>", "<|im_start|>assistant\n36+32 = 68<|im_end|>",
             "<|im_start|>user\nWhat is 2*3?<|im_end|>", "<|im_start|>assistant\n2*3 = 6<|im_end|>",
             "<|im_start|>user\nWhat is 5+6?\nBe exact.<|im_end|>"]
    positions = [text.find(turn) for turn in turns]
    assert -1 not in positions and positions == sorted(positions), text
    assert text.endswith("<|im_start|>assistant\n")
    # The same prompt without exemplars renders exactly as its text does.
    assert seen[1] == tiny_engine.render("Be exact.", "What is 5+6?") == tiny_engine.render(Prompt("Be exact."),
                                                                                            "What is 5+6?")


def test_score_pairs_inlines_exemplars_without_a_chat_template(tiny_engine, monkeypatch):
    monkeypatch.setattr(tiny_engine, "template", "{question}\n{prompt}")
    seen = _captured_texts(tiny_engine, monkeypatch)
    prompt = Prompt("Be exact.", (Exemplar("What is 36+32?", "36+32 = 68"), Exemplar("What is 2*3?", "2*3 = 6")))
    score_pairs(tiny_engine, RewardMix(["correct"]), [_problem("What is 5+6?", "11")], [prompt], Decoding(4))
    assert seen == ["Q: What is 36+32?\nA: 36+32 = 68\n\nQ: What is 2*3?\nA: 2*3 = 6\n\nWhat is 5+6?\nBe exact."]


def test_a_pool_over_several_kinds_gives_every_kind_its_share():
    from collections import Counter

    from rlprompt_math.data import generate_problems

    problems = generate_problems(1500, seed=3, kinds=None, difficulty=[1, 2])
    pool = ExemplarPool.from_splits(problems[:1000], problems[1000:], 26, seed=1)
    counts = Counter(p.kind for p in pool.problems)
    kinds = {p.kind for p in problems[:1000]}
    assert set(counts) == kinds and max(counts.values()) - min(counts.values()) <= 1
    assert ExemplarPool.from_splits(problems[:1000], problems[1000:], 26, seed=1).problems == pool.problems
    # One kind: exactly the uniform draw of before (the default run's pool is unchanged).
    import random
    one = [p for p in problems[:1000] if p.kind == "arithmetic"]
    assert ExemplarPool.from_splits(one, [], 8, seed=5).problems == random.Random(5).sample(one, 8)
