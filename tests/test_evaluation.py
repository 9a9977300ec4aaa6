"""Evaluation statistics and reports."""

import csv
import json

import numpy as np
import pytest

from rlprompt_math.data import generate_problems
from rlprompt_math.evaluation import bootstrap_ci, compare_systems, mcnemar_p, paired_comparison, write_report
from rlprompt_math.oracle import Decoding
from rlprompt_math.rewards import RewardMix


def test_mcnemar():
    a = [True, False, True, True]
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p([True] * 20 + [False] * 5, [False] * 20 + [False] * 5) == pytest.approx(2 / 2 ** 20)
    assert mcnemar_p([True, False], [False, True]) == 1.0


def test_paired_comparison():
    system = [True, True, True, False, False, True]
    reference = [True, False, False, False, True, False]
    result = paired_comparison(system, reference)
    assert result == {"accuracy_difference": pytest.approx(2 / 6 - 4 / 6), "mcnemar_p": mcnemar_p(reference, system),
                      "reference_only_correct": 1, "this_only_correct": 3}
    assert paired_comparison(reference, reference)["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="not the same problems"):
        paired_comparison(system, reference[:-1])


def test_bootstrap_contains_estimate():
    x = np.random.default_rng(0).random(100) < 0.3
    lo, hi = bootstrap_ci(x)
    assert lo <= x.mean() <= hi and hi - lo < 0.3


def test_report_consistent(tiny_engine, tmp_path):
    problems = generate_problems(12, seed=0, kinds=["arithmetic"])
    systems = {"a": ["Be exact."] * 12, "a again": ["Be exact."] * 12, "none": [""] * 12}
    report = compare_systems(tiny_engine, RewardMix(["correct"]), problems, systems, Decoding(6), progress=False)
    paths = write_report(report, problems, tmp_path)
    data = json.loads(paths["report"].read_text())
    for s in data["systems"].values():
        assert s["ci95"][0] <= s["accuracy"] <= s["ci95"][1]
        assert 0 <= s["extraction_rate"] <= 1 and s["n"] == 12
    assert data["systems"]["a again"]["vs_reference"]["mcnemar_p"] == 1.0
    for name in ("a again", "none"):  # the vs_reference entry is the paired comparison with the reference
        assert data["systems"][name]["vs_reference"] == paired_comparison(report["_results"][name].correct,
                                                                          report["_results"]["a"].correct)
    with open(paths["per_question"]) as handle:
        assert len(list(csv.DictReader(handle))) == 12 * 3
    assert paths["chart"].stat().st_size > 1000
