"""Evaluation statistics and reports."""

import csv
import json

import numpy as np
import pytest

from rlprompt_math.data import generate_problems
from rlprompt_math.evaluation import (bootstrap_ci, compare_systems, mcnemar_p, paired_comparison, upgrade_report,
                                     write_report)
from rlprompt_math.oracle import Decoding
from rlprompt_math.rewards import RewardMix


def test_mcnemar():
    a = [True, False, True, True]
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p([True] * 20 + [False] * 5, [False] * 20 + [False] * 5) == pytest.approx(2 / 2 ** 20)
    assert mcnemar_p([True, False], [False, True]) == 1.0


def test_paired_comparison():
    system = [True, True, True, False, False, True]
    learned = [True, False, False, False, True, False]
    result = paired_comparison(system, learned)
    # The sign its name says: this system (4 of 6) minus the learned policy (2 of 6).
    assert result == {"accuracy_minus_learned": pytest.approx(4 / 6 - 2 / 6), "mcnemar_p": mcnemar_p(learned, system),
                      "learned_only_correct": 1, "this_only_correct": 3}
    assert paired_comparison(learned, learned)["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="not the same problems"):
        paired_comparison(system, learned[:-1])


def test_a_report_written_before_the_rename_reads_as_today():
    """report.json said `reference` and `vs_reference` (learned minus system) for the learned policy: read back,
    they are `learned` and `vs_learned` (system minus learned), and a current report is left as it is."""
    old_comparison = {"accuracy_difference": 0.25, "mcnemar_p": 0.5, "reference_only_correct": 3,
                      "this_only_correct": 1}
    new_comparison = {"accuracy_minus_learned": -0.25, "mcnemar_p": 0.5, "learned_only_correct": 3,
                      "this_only_correct": 1}

    def report(learned_key: str, vs_key: str, comparison: dict) -> dict:
        systems = {"learned policy": {"accuracy": 0.5}, "Be exact.": {"accuracy": 0.25, vs_key: comparison}}
        return {"model": "m", learned_key: "learned policy", "systems": systems,
                "by_kind": {"arithmetic": {"n": 4, "systems": systems}}}

    old, new = report("reference", "vs_reference", old_comparison), report("learned", "vs_learned", new_comparison)
    assert upgrade_report(old) == new
    assert upgrade_report(new) == new


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
    assert data["learned"] == "a" and "vs_learned" not in data["systems"]["a"]  # the first system, by default
    assert data["systems"]["a again"]["vs_learned"]["mcnemar_p"] == 1.0
    for name in ("a again", "none"):  # the vs_learned entry is the paired comparison with the learned system
        assert data["systems"][name]["vs_learned"] == paired_comparison(report["_results"][name].correct,
                                                                        report["_results"]["a"].correct)
    with open(paths["per_question"]) as handle:
        assert len(list(csv.DictReader(handle))) == 12 * 3
    assert paths["chart"].stat().st_size > 1000


def test_structured_prompts_in_tables_csv_and_report(tiny_engine, tmp_path):
    """Systems whose prompts are `Prompt` objects: labels in the table and the CSV, the exemplars and
    instruction in report.json, McNemar against the learned policy like any system."""
    from rlprompt_math.evaluation import format_table, reference_systems
    from rlprompt_math.exemplars import few_shot_reference, reference_name

    problems = generate_problems(6, seed=1, kinds=["arithmetic"])
    shots = few_shot_reference(generate_problems(20, seed=2, kinds=["arithmetic"]), 2)
    systems = reference_systems([shots] * 6, ["", "Be exact."], named={reference_name(2): shots})
    assert list(systems) == ["learned policy", "(no prompt)", "Be exact.", reference_name(2)]
    assert systems[reference_name(2)] == [shots] * 6
    report = compare_systems(tiny_engine, RewardMix(["correct"]), problems, systems, Decoding(4), progress=False)
    paths = write_report(report, problems, tmp_path)
    data = json.loads(paths["report"].read_text())
    few = data["systems"][reference_name(2)]
    assert few["prompts"] == [{"prompt": str(shots), "count": 6, "structured": shots.to_dict()}]
    assert few["vs_learned"] == paired_comparison(report["_results"][reference_name(2)].correct,
                                                  report["_results"]["learned policy"].correct)
    assert few["vs_learned"]["mcnemar_p"] == 1.0  # the same prompt as the learned one
    assert data["systems"]["Be exact."]["prompts"] == [{"prompt": "Be exact.", "count": 6}]  # text: as before
    with open(paths["per_question"]) as handle:
        rows = [r for r in csv.DictReader(handle) if r["system"] == reference_name(2)]
    assert len(rows) == 6 and {r["prompt"] for r in rows} == {str(shots)}
    table = format_table(report)
    assert reference_name(2) in table  # named in full, not cut


def _saved_run(run_dir, model_dir, engine, **settings):
    """A run directory as training leaves it, holding a fixed prompt (no training needed)."""
    from rlprompt_math.checkpoint import CONFIG, POLICY_BEST, SPLIT_MANIFEST, save_policy
    from rlprompt_math.config import RunConfig
    from rlprompt_math.data import problems_from_config, write_split_manifest
    from rlprompt_math.policies import FixedPrompt
    from rlprompt_math.runlog import RunDir
    from rlprompt_math.vocab import ActionVocab

    config = RunConfig.from_flat({"model": str(model_dir), "dtype": "float32", "num_problems": 80,
                                  "max_new_tokens": 4, **settings})
    run = RunDir(run_dir)
    run.write_config(config.to_flat())
    _, splits, _ = problems_from_config(config.data, config.seed)
    write_split_manifest(run.path / SPLIT_MANIFEST, splits, config.seed)
    save_policy(run.path / POLICY_BEST, FixedPrompt("Be exact."), ActionVocab.from_spec(engine.tokenizer), engine)
    assert (run.path / CONFIG).exists()
    return config, splits


def test_evaluate_reference_shots_adds_the_few_shot_reference(tiny_model_dir, tiny_engine, tmp_path):
    """`run.py evaluate --reference-shots K`: the first K of the run's training problems, answers in
    spaced form (the model's own), as one more reference with its paired McNemar row; default: the run's setting."""
    from click.testing import CliRunner

    from rlprompt_math.cli import main
    from rlprompt_math.exemplars import few_shot_reference, reference_name

    run = tmp_path / "run"
    _, splits = _saved_run(run, tiny_model_dir, tiny_engine, reference_shots=1)

    def evaluate(*args):
        result = CliRunner().invoke(main, ["evaluate", str(run), "--limit", "3", "--quiet", "--no-default-references",
                                           "--reference-prompt", "Be brief.", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output, json.loads((run / "eval-test" / "report.json").read_text())

    output, report = evaluate("--reference-shots", "3")
    name = reference_name(3)
    assert list(report["systems"]) == ["learned policy", "Be brief.", name]
    expected = few_shot_reference(splits["train"], 3)
    assert [e.question for e in expected.exemplars] == [p.question for p in splits["train"][:3]]
    few = report["systems"][name]
    assert few["prompts"] == [{"prompt": str(expected), "count": 3, "structured": expected.to_dict()}]
    assert report["learned"] == "learned policy"
    assert set(few["vs_learned"]) == {"accuracy_minus_learned", "mcnemar_p", "learned_only_correct",
                                      "this_only_correct"}
    assert name in output and "p vs learned" in output
    with open(run / "eval-test" / "per_question.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3

    assert list(evaluate()[1]["systems"]) == ["learned policy", "Be brief.", reference_name(1)]  # the run's setting
    assert list(evaluate("--reference-shots", "0")[1]["systems"]) == ["learned policy", "Be brief."]
    result = CliRunner().invoke(main, ["evaluate", str(run), "--limit", "3", "--quiet", "--reference-shots", "9999"])
    assert result.exit_code == 1 and "training problems" in result.output.strip().splitlines()[-1]


def test_evaluate_refuses_a_few_shot_reference_from_changed_data(tiny_model_dir, tiny_engine, tmp_path):
    """The few-shot reference shows the run's own training problems: a split manifest that no longer
    matches the data settings stops it with one line, not other problems in its place."""
    from click.testing import CliRunner

    from rlprompt_math.checkpoint import SPLIT_MANIFEST
    from rlprompt_math.cli import main

    run = tmp_path / "run"
    _saved_run(run, tiny_model_dir, tiny_engine)
    manifest = json.loads((run / SPLIT_MANIFEST).read_text())
    manifest["splits"]["train"] = manifest["splits"]["train"][::-1]
    (run / SPLIT_MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["evaluate", str(run), "--limit", "3", "--quiet"])
    assert result.exit_code == 1 and "dataset changed" in result.output, result.output


def test_the_per_kind_table(tiny_engine, tmp_path):
    from rlprompt_math.evaluation import format_table

    problems = generate_problems(8, seed=0, kinds=["arithmetic"]) + generate_problems(6, seed=0, kinds=["remainders"])
    per_question = ["Be exact." if p.kind == "arithmetic" else "Say it." for p in problems]
    systems = {"policy": per_question, "one": ["Be exact."] * len(problems)}
    report = compare_systems(tiny_engine, RewardMix(["correct"]), problems, systems, Decoding(6), progress=False)
    assert report["systems"]["policy"]["distinct_prompts"] == 2 and report["systems"]["one"]["distinct_prompts"] == 1
    kinds = report["by_kind"]
    assert list(kinds) == ["arithmetic", "remainders"] and kinds["arithmetic"]["n"] == 8 and kinds["remainders"]["n"] == 6
    assert kinds["arithmetic"]["systems"]["policy"]["distinct_prompts"] == 1
    correct = {name: report["_results"][name].correct for name in systems}
    rows = np.array([p.kind == "remainders" for p in problems])
    cell = kinds["remainders"]["systems"]["one"]
    assert cell["accuracy"] == pytest.approx(correct["one"][rows].mean())
    assert cell["vs_learned"] == paired_comparison(correct["one"][rows], correct["policy"][rows])
    assert "vs_learned" not in kinds["remainders"]["systems"]["policy"]
    text = format_table(report)
    assert "remainders" in text and "arithmetic" in text and "learned prompts" in text
    data = json.loads(write_report(report, problems, tmp_path)["report"].read_text())
    assert data["by_kind"]["remainders"]["n"] == 6
    # One kind (or problems that name none): no per-kind table.
    one_kind = compare_systems(tiny_engine, RewardMix(["correct"]), problems[:8], {"a": ["x"] * 8}, Decoding(6),
                               progress=False)
    assert "by_kind" not in one_kind
