"""Reward protocol (TRL's), built-ins, weighted mixes and user plug-ins."""

import math
import textwrap

import pytest

from rlprompt_math.rewards import RewardError, RewardMix, load_reward

COLUMNS = {"question": ["What is 2+3?", "What is 10/4?", "What is 7*8?"], "answer": ["5", "2.5", "56"]}
COMPLETIONS = ["2 + 3 = 5", "The answer is 5/2.", "I am not sure."]
PROMPTS = ["p1", "p2", "p3"]


def test_builtins_follow_trl_protocol():
    mix = RewardMix(["correct", "partial", "format"])
    totals, per = mix(PROMPTS, COMPLETIONS, **COLUMNS)
    assert per["correct"] == [1.0, 1.0, 0.0]
    assert per["partial"] == [1.0, 1.0, 0.0]
    assert per["format"] == [1.0, 1.0, 0.0]
    assert totals == [3.0, 3.0, 0.0]


def test_weights_and_none(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(textwrap.dedent("""
        def brevity(prompts, completions, **kwargs):
            return [None if not c else -len(c) / 100 for c in completions]
    """))
    mix = RewardMix(["correct:2", f"{plugin}:brevity:0.5"])
    totals, per = mix(PROMPTS, ["5", "", "x"], **COLUMNS)
    assert per["brevity"] == [-0.01, None, -0.01]
    assert totals == pytest.approx([2 - 0.005, 0.0, -0.005])
    assert mix.describe() == "2*correct + 0.5*brevity"


def test_trl_style_reward_works_unchanged():
    # A reward as written for TRL's GRPOTrainer (keyword columns, **kwargs for the rest).
    def reward_len(completions, **kwargs):
        return [-abs(20 - len(completion)) for completion in completions]

    totals, _ = RewardMix([reward_len])(PROMPTS, COMPLETIONS, **COLUMNS)
    assert totals == [-abs(20 - len(c)) for c in COMPLETIONS]


def test_module_spec_loads():
    reward = load_reward("rlprompt_math.rewards:correct:0.25")
    assert reward.weight == 0.25 and reward.name == "correct"


def test_bad_rewards_fail_clearly(tmp_path):
    plugin = tmp_path / "bad.py"
    plugin.write_text("def short(prompts, completions, **kw):\n    return [1.0]\n"
                      "def boom(prompts, completions, **kw):\n    raise KeyError('oops')\n"
                      "def nan(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n")
    with pytest.raises(RewardError, match=r"'short' returned 1 values for 3 completions \(batch 7\)"):
        RewardMix([f"{plugin}:short"])(PROMPTS, COMPLETIONS, batch_label="batch 7", **COLUMNS)
    with pytest.raises(RewardError, match=r"'boom' raised KeyError"):
        RewardMix([f"{plugin}:boom"])(PROMPTS, COMPLETIONS, **COLUMNS)
    with pytest.raises(RewardError, match=r"'nan' returned nan"):
        RewardMix([f"{plugin}:nan"])(PROMPTS, COMPLETIONS, **COLUMNS)
    with pytest.raises(RewardError, match="unknown reward"):
        load_reward("corect")
    with pytest.raises(RewardError, match="not found"):
        load_reward(str(tmp_path / "missing.py") + ":f")
    with pytest.raises(RewardError, match="no callable"):
        load_reward(f"{plugin}:absent")
    with pytest.raises(RewardError, match="needs the frozen LLM"):
        load_reward("likelihood")


def test_likelihood_reward_scale(tiny_engine):
    mix = RewardMix(["likelihood"], engine=tiny_engine)
    texts = [tiny_engine.render("", q) for q in COLUMNS["question"]]
    totals, _ = mix(texts, COMPLETIONS, **COLUMNS)
    expected = [math.exp(v) for v in tiny_engine.answer_logprobs(texts, COLUMNS["answer"], reduction="mean")]
    assert totals == pytest.approx(expected)
    assert all(0 < t <= 1 for t in totals)


def test_answer_likelihood_forces_the_gold_where_the_model_states_its_answer(tiny_engine):
    from rlprompt_math.grading import answer_position

    completions = ["2 + 3 = 6\n", "The answer is 5/2.", "I am not sure."]
    # The lead-in is the completion up to its final number; with none, the whole completion.
    assert [c[:answer_position(c)] for c in completions] == ["2 + 3 = ", "The answer is ", "I am not sure."]
    texts = [tiny_engine.render("", q) for q in COLUMNS["question"]]
    totals, per = RewardMix(["answer_likelihood"], engine=tiny_engine)(texts, completions, **COLUMNS)
    lead_ins = [t + c[:answer_position(c)] for t, c in zip(texts, completions)]
    # Gold tokens up to and including the first where the model's own answer departs from them; on the
    # tiny model's tokenizer "5" vs "6", "2.5" vs "5/2." and "56" vs nothing all depart at the first.
    first = [tiny_engine.tokenizer.decode(tiny_engine.tokenizer(a, add_special_tokens=False)["input_ids"][:1])
             for a in COLUMNS["answer"]]
    expected = [math.exp(v) for v in tiny_engine.answer_logprobs(lead_ins, first, reduction="sum")]
    assert totals == pytest.approx(expected)
    assert all(0 < t <= 1 for t in totals)
    # Not the bare likelihood: the model's own lead-in changes what is scored.
    bare = [math.exp(v) for v in tiny_engine.answer_logprobs(texts, COLUMNS["answer"], reduction="sum")]
    assert totals[0] != pytest.approx(bare[0])


def test_decode_trace_equals_a_plain_forward_pass(tiny_engine):
    import torch

    tok = tiny_engine.tokenizer
    text = tiny_engine.render("", COLUMNS["question"][0])
    tiny_engine.generate([text], max_new_tokens=10, use_cache=False, watch=list(range(len(tok))))
    trace = tiny_engine.trace(text)
    ids = tiny_engine.encode([text])[0] + list(trace.token_ids)
    with torch.no_grad():
        logits = tiny_engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[len(ids) - len(trace.token_ids) - 1: len(ids) - 1]
    assert torch.allclose(trace.logprobs[: len(trace.token_ids)], expected, atol=1e-4)
    # The trace finds where it wrote a given lead-in, and refuses text another decode wrote.
    completion = tok.decode(trace.token_ids, skip_special_tokens=True)
    position = len(tok.decode(trace.token_ids[:3], skip_special_tokens=True))
    k = trace.token_index(tok, completion, position)
    assert k is not None and tok.decode(trace.token_ids[:k], skip_special_tokens=True) == completion[:position]
    assert trace.token_index(tok, "#" + completion, position) is None
    # Scoring the model's own next tokens from step 2 on: the sum of the recorded steps.
    own = list(trace.token_ids)
    assert trace.logprob(2, own[2:5]) == pytest.approx(float(sum(expected[2 + j, t] for j, t in enumerate(own[2:5]))),
                                                       abs=1e-4)


def test_answer_likelihood_reads_the_decode_and_stops_at_the_departure(tiny_engine, monkeypatch):
    import rlprompt_math.rewards as rewards_module
    from rlprompt_math.data import Problem
    from rlprompt_math.oracle import Decoding, score_pairs

    tok = tiny_engine.tokenizer
    text = tiny_engine.render("", COLUMNS["question"][0])
    tiny_engine._traces.clear()
    tiny_engine.generate([text], max_new_tokens=12, use_cache=False, watch=list(range(len(tok))))
    own = list(tiny_engine.trace(text).token_ids)
    # The random tiny model writes no numbers: put its "answer" at its 4th token.
    monkeypatch.setattr(rewards_module, "answer_position", lambda completion: len(tok.decode(own[:4])))
    monkeypatch.setattr(rewards_module.AnswerLikelihood, "_ids", lambda self, text: [int(t) for t in text.split()])
    other = next(t for t in range(len(tok)) if t not in own[4:7])
    golds = {"departs at once": [other, own[5]], "after one": [own[4], other, own[6]], "never": own[4:7]}
    problems = [Problem(name, COLUMNS["question"][0], " ".join(map(str, ids))) for name, ids in golds.items()]
    mix = RewardMix(["answer_likelihood"], engine=tiny_engine)
    calls = tiny_engine.stats.forward_rows
    rewards, _ = score_pairs(tiny_engine, mix, problems, [""] * 3, Decoding(12, stop_at_answer=False))
    assert tiny_engine.stats.forward_rows == calls  # read from the decode: no teacher-forced pass
    trace = tiny_engine.trace(text)
    expected = [trace.logprob(4, [other]), trace.logprob(4, [own[4], other]), trace.logprob(4, own[4:7])]
    assert rewards.tolist() == pytest.approx([math.exp(v) for v in expected], rel=1e-5)


def test_trace_token_index_bisects_to_the_token_a_linear_scan_finds(tiny_engine):
    import random

    import torch

    from rlprompt_math.engines.base import Trace

    tok = tiny_engine.tokenizer
    # Multi-byte characters split over byte-level tokens, and special tokens that decode to nothing.
    text = "Préférez 3×4 = 12 ✓ — so the answer is 12. 東京 ½ "
    ids = tok(text * 3, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    decodes = []

    class Counting:
        def decode(self, token_ids, **kwargs):
            decodes.append(1)
            return tok.decode(token_ids, **kwargs)

    def linear(trace, completion, position):
        for k in range(len(trace.token_ids) + 1):
            decoded = tok.decode(trace.token_ids[:k], skip_special_tokens=True)
            if len(decoded) >= position:
                return k if decoded == completion[:position] else None
        return None

    rng = random.Random(0)
    for _ in range(40):
        start = rng.randrange(len(ids) // 2)
        trace = Trace(tuple(ids[start:start + rng.randrange(1, 60)]), (), torch.zeros(0, 0))
        completion = tok.decode(trace.token_ids, skip_special_tokens=True)
        for position in {0, 1, len(completion) // 3, len(completion) // 2, len(completion), len(completion) + 2}:
            for written in (completion, "x" + completion):
                decodes.clear()
                assert trace.token_index(Counting(), written, position) == linear(trace, written, position)
                assert len(decodes) <= 3 + len(trace.token_ids).bit_length()
