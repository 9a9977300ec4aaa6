"""The command line end to end on the tiny model: train, resume, evaluate, config files, errors."""

import csv
import json

from click.testing import CliRunner
from conftest import FAST_FLAGS, FAST_RUN, as_flags, metrics_rows

from rlprompt_math.checkpoint import (
    CONFIG,
    FINAL_EVAL,
    LEARNING_CURVE,
    METRICS,
    POLICY_BEST,
    POLICY_LAST,
    SAMPLES,
    SPLIT_MANIFEST,
    STATE_LAST,
    TENSORBOARD,
)
from rlprompt_math.cli import main


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def test_help_explains():
    result = _run(["--help"])
    assert result.exit_code == 0 and "evaluate" in result.output and "train" in result.output
    result = _run(["--agent", "reinforce", "--help"])
    for flag in ("--steps", "--seed", "--output-dir", "--model", "--dataset", "--reward", "--resume", "--config",
                 "--baseline", "--entropy-coef", "--entropy-schedule", "--policy", "--action-vocab",
                 "--prompts-per-question", "--load-in-8bit", "--template", "--question-field"):
        assert flag in result.output, flag
    result = _run(["serve", "--help"])
    assert result.exit_code == 0 and "vllm" in result.output and "llama-server" in result.output
    result = _run(["serve", "vllm", "--help"])
    for flag in ("--model", "--port", "--replicas", "--dtype", "--vllm-python", "--log-dir"):
        assert flag in result.output, flag


def test_three_step_run_resume_and_evaluate(tiny_model_dir, tmp_path):
    out = tmp_path / "runs"
    result = _run(["--agent", "reinforce", "--model", str(tiny_model_dir), "--policy", "refiner",
                   "--output-dir", str(out), "--name", "r", "--reward", "correct", "--reward", "partial:0.5",
                   *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    run = out / "r"
    for name in (CONFIG, SPLIT_MANIFEST, METRICS, SAMPLES, POLICY_BEST, POLICY_LAST, STATE_LAST, LEARNING_CURVE,
                 f"{FINAL_EVAL}/report.json"):
        assert (run / name).exists(), name
    assert any((run / TENSORBOARD).iterdir())
    assert "learned prompt(s):" in result.output and "(no prompt)" in result.output
    rows = metrics_rows(run)
    # The untrained policy's validation first (step -1: the learning curve's start), then one row per step.
    assert [int(r["step"]) for r in rows] == [-1, 0, 1, 2] and rows[0]["val_accuracy"] != "" and rows[0]["reward"] == ""

    result = _run(["--resume", str(run), "--steps", "5", "--quiet", "--no-final-eval"])
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    assert [int(r["step"]) for r in metrics_rows(run)] == [-1, 0, 1, 2, 3, 4]  # kept on resume, not redone

    result = _run(["evaluate", str(run), "--limit", "4", "--reference-prompt", "Be exact.", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval-test" / "report.json").read_text())
    assert set(report["systems"]) == {"learned policy", "(no prompt)", "Let's think step by step.",
                                      "Answer with only the final number.", "Give the answer as a single number.",
                                      "Be exact.", "2-shot (first 2 training problems, spaced form)"}
    with open(run / "eval-test" / "per_question.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 7 * 4


def test_random_and_fixed_agents_and_config_file(tiny_model_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nprompt_length: 2\nsteps: 2\n")
    for agent in ("random", "fixed"):
        result = _run(["--config", str(cfg), "--agent", agent, "--output-dir", str(tmp_path), "--name", agent,
                       *as_flags({**FAST_RUN, "eval_every": 2})])  # no --steps: the file's steps: 2 holds
        assert result.exit_code == 0, result.output
        saved = (tmp_path / agent / CONFIG).read_text()
        assert "prompt_length: 2" in saved and f"agent: {agent}" in saved


def test_clear_errors(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2"}\n')
    result = CliRunner().invoke(main, ["--model", str(tiny_model_dir), "--dataset", str(bad), "--output-dir",
                                       str(tmp_path), *FAST_FLAGS])
    assert result.exit_code != 0 and "bad.jsonl:2" in result.output
    result = CliRunner().invoke(main, ["--model", str(tmp_path / "missing.gguf"), "--output-dir", str(tmp_path),
                                       *FAST_FLAGS])
    assert result.exit_code != 0 and "GGUF file not found" in result.output
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("stepz: 3\n")
    result = CliRunner().invoke(main, ["--config", str(cfg)])
    assert result.exit_code != 0 and "stepz" in result.output


def test_prompt_prints_a_conditioned_policys_prompt_per_question(tiny_model_dir, tmp_path):
    from rlprompt_math.checkpoint import EXEMPLARS
    from rlprompt_math.evaluation import run_prompts

    out = tmp_path / "runs"
    # --network-lr 0: the refiner stays as it starts, at nearest-neighbour retrieval (its pointer head).
    result = _run(["--agent", "reinforce", "--model", str(tiny_model_dir), "--policy", "refiner", "--kinds", "all",
                   "--network-lr", "0", "--output-dir", str(out), "--name", "r", "--no-final-eval",
                   *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    run = out / "r"
    pool = [p["question"] for p in json.loads((run / EXEMPLARS).read_text())["problems"]]
    questions = [pool[3], "What is the remainder when 47 is divided by 5?"]
    result = _run(["prompt", str(run), *questions, "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["question"] for r in records] == questions
    for record in records:
        assert record["messages"][-1]["role"] == "user" and questions[records.index(record)] in record["messages"][-1]["content"]
        shown = [turn["content"] for turn in record["messages"][:-1:2]]
        assert shown == [e["question"] for e in record["exemplars"]] and set(shown) <= set(pool)
    assert records[0]["exemplars"][0]["question"] == pool[3]  # a pool question's nearest pool problem is itself
    assert records == run_prompts(run, questions, log=lambda line: None)
    text = _run(["prompt", str(run), questions[1]])
    assert text.exit_code == 0 and "prompt:" in text.output and "assistant:" in text.output
    assert _run(["prompt", str(tmp_path), "What is 2+2?"]).exit_code != 0
