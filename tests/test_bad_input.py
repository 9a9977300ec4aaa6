"""Bad input, given as a user gives it (issue 34): each case runs `python run.py ...` in a subprocess and must
stop with a non-zero exit status and ONE line that names what is wrong (the file and line, or the flag and its
range), with no traceback, and leave no half-made run directory. Settings are refused before a model loads;
only the cases that need the model's own limits or a run's checkpoint load it. Then the strict JSON every
writer produces, and the dtype a run records and its later commands reuse."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rlprompt_math.checkpoint import CONFIG, POLICY_LAST, STATE_LAST, SUMMARY, dumps_json, json_safe

ROOT = Path(__file__).resolve().parents[1]

# Issue 34's tiny run T: every case adds its bad part (a later flag overrides an earlier one).
T = ["--dtype", "float32", "--steps", "1", "--batch-size", "2", "--prompts-per-question", "2", "--val-size", "2",
     "--test-size", "2", "--max-new-tokens", "8", "--num-problems", "60", "--shots", "0", "--prompt-length", "2",
     "--quiet"]
NO_EVAL = ["--no-final-eval"]


def run_py(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python run.py ARGS` from the repository root, offline, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run.py", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def unwritable(base: Path) -> Path:
    """A folder that cannot be written: read-only permission bits, or for root (whom those do not stop) /sys."""
    if os.geteuid() != 0:
        locked = base / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "out"
    if not Path("/sys").is_dir() or not _sys_refuses():
        pytest.skip("no folder here that root cannot write")
    return Path("/sys/rlprompt-math-test-out")


def _sys_refuses() -> bool:
    try:
        os.mkdir("/sys/rlprompt-math-probe")
    except OSError:
        return True
    os.rmdir("/sys/rlprompt-math-probe")
    return False


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_model_dir):
    """The bad files and run directories the cases point at, and a good run (trained once, as a user would)."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "latin1.jsonl").write_bytes(b'{"question": "What is 1+1?", "answer": "2"}\n'
                                        b'{"question": "Caf\xe9: what is 2+2?", "answer": "4"}\n')
    (root / "latin1.csv").write_bytes(b"question,answer\nWhat is 1+1?,2\nCaf\xe9: what is 2+2?,4\n")
    (root / "plain.csv").write_text("question,answer\nWhat is 1+1?,2\nWhat is 2+2?,4\n")
    (root / "huge.jsonl").write_text(json.dumps({"question": "What is 1+1? " * 80_000, "answer": "2"}) + "\n")
    # Fits the loading limit but not the tiny model's 512 positions.
    (root / "long.jsonl").write_text("".join(json.dumps({"question": f"What is {i}+1? " + "Think. " * 200,
                                                          "answer": str(i + 1)}) + "\n" for i in range(40)))
    (root / "number.yaml").write_text("3\n")
    (root / "broken.yaml").write_text("steps: 2\nrewards: [correct\nlr: 0.5\n")
    (root / "float.yaml").write_text("steps: 1.7\n")
    (root / "notarun").mkdir()
    done = run_py(*T, *NO_EVAL, "--model", tiny_model_dir, "--output-dir", root, "--name", "good")
    assert done.returncode == 0, done.stderr
    good = root / "good"
    shutil.copytree(good, root / "corrupt")
    (root / "corrupt" / CONFIG).write_text("steps: [1\nseed: 0\n")
    shutil.copytree(good, root / "other")  # its checkpoint was saved with --prompt-length 2
    text = (good / CONFIG).read_text()
    assert "prompt_length: 2\n" in text
    (root / "other" / CONFIG).write_text(text.replace("prompt_length: 2\n", "prompt_length: 3\n"))
    return {"root": root, "model": tiny_model_dir, "good": good}


# (id, arguments, words the one line must hold, whether nothing but that line may reach stderr). "{x}" is filled
# from the `bad` fixture and the case's output folder ({out}); "{unwritable}" is a folder that cannot be written.
CASES = [
    # Data files
    ("non-utf8-jsonl", [*T, *NO_EVAL, "--dataset", "{root}/latin1.jsonl"], ["latin1.jsonl:2", "not UTF-8"], True),
    ("non-utf8-jsonl-skip-bad-rows", [*T, *NO_EVAL, "--dataset", "{root}/latin1.jsonl", "--skip-bad-rows"],
     ["latin1.jsonl:2", "not UTF-8"], True),
    ("non-utf8-csv", [*T, *NO_EVAL, "--dataset", "{root}/latin1.csv"], ["latin1.csv:3", "not UTF-8"], True),
    ("1MB-question", [*T, *NO_EVAL, "--dataset", "{root}/huge.jsonl"], ["huge.jsonl:1", "1,040,000 characters"],
     False),
    ("question-beyond-the-models-positions", [*T, *NO_EVAL, "--dataset", "{root}/long.jsonl"],
     ["long.jsonl", "tokens", "512 positions"], False),
    ("too-few-problems-for-a-validation-split", [*T, *NO_EVAL, "--num-problems", "5"],
     ["validation split is empty", "--num-problems"], True),
    # Settings out of range, refused before a model loads
    ("batch-size-0", [*T, "--batch-size", "0"], ["--batch-size", ">= 1", "got 0"], True),
    ("batch-size-negative", [*T, "--batch-size", "-2"], ["--batch-size", ">= 1", "got -2"], True),
    ("prompts-per-question-0", [*T, "--prompts-per-question", "0", "--baseline", "none"],
     ["--prompts-per-question", ">= 1"], True),
    ("lr-nan", [*T, "--lr", "nan"], ["--lr", "finite"], True),
    ("lr-inf", [*T, "--lr", "inf"], ["--lr", "finite"], True),
    ("checkpoint-every-0", [*T, "--checkpoint-every", "0"], ["--checkpoint-every", ">= 1"], True),
    ("random-steps-0", [*T, "--agent", "random", "--steps", "0"], ["--steps", ">= 1", "got 0"], True),
    ("steps-0", [*T, "--steps", "0"], ["--steps", ">= 1", "got 0"], True),
    ("num-problems-0", [*T, "--num-problems", "0"], ["--num-problems", ">= 1"], True),
    ("num-problems-negative", [*T, "--num-problems", "-5"], ["--num-problems", ">= 1", "got -5"], True),
    ("val-size-0", [*T, "--val-size", "0"], ["--val-size", ">= 1", "got 0"], True),
    ("val-size-negative", [*T, "--val-size", "-1"], ["--val-size", ">= 1", "got -1"], True),
    ("test-size-0-with-final-comparison", [*T, "--test-size", "0"], ["--test-size", ">= 1", "--no-final-eval"],
     True),
    ("max-new-tokens-0", [*T, "--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"], True),
    ("max-new-tokens-negative", [*T, "--max-new-tokens", "-5"], ["--max-new-tokens", ">= 1"], True),
    ("eval-every-negative", [*T, "--eval-every", "-1"], ["--eval-every", ">= 0"], True),
    ("pointer-scale-negative", [*T, "--pointer-scale", "-1"], ["--pointer-scale", ">= 0"], True),
    ("clusters-negative", [*T, "--agent", "cluster", "--clusters", "-1"], ["--clusters", ">= 0", "one per kind"], True),
    ("max-oracle-pairs-negative", [*T, "--max-oracle-pairs", "-1"], ["--max-oracle-pairs", ">= 0", "got -1",
                                                                   "0: no cap"], True),
    # T plans 8 pairs (4 training + 2 validations x 2); a model that is not there shows nothing was loaded
    ("plan-over-max-oracle-pairs", [*T, "--max-oracle-pairs", "5", "--model", "{root}/no-model"],
     ["--max-oracle-pairs 5", "plans 8 (4 training + 2 validations x 2)", "--steps"], True),
    ("knn-without-exemplar-slots", [*T, "--agent", "knn", "--shots", "0"], ["--agent knn", "--shots must be >= 1"],
     True),
    ("kind-field-missing-column", [*T, *NO_EVAL, "--dataset", "{root}/plain.csv", "--kind-field", "topic"],
     ["plain.csv", "no column 'topic' for --kind-field"], False),  # after the dataset's own load lines
    ("dtype-unknown", [*T, "--dtype", "int3"], ["--dtype", "float32", "int3"], True),
    ("difficulty-unknown", [*T, "--difficulty", "1,x"], ["--difficulty", "1, 2 or 3"], True),
    # --config files
    ("config-holds-a-number", [*T, "--config", "{root}/number.yaml"], ["number.yaml", "not settings"], True),
    ("config-syntax-error", [*T, "--config", "{root}/broken.yaml"], ["broken.yaml:3", "not valid YAML"], True),
    ("config-float-for-an-integer", [*T, "--config", "{root}/float.yaml"], ["float.yaml", "steps", "1.7",
                                                                          "not an integer"], True),
    # --resume
    ("resume-a-folder-that-is-not-a-run", ["--resume", "{root}/notarun"], ["notarun", "not a run directory"], True),
    ("resume-a-corrupt-config", ["--resume", "{root}/corrupt"], ["corrupt/config.yaml:2", "not valid YAML"], True),
    ("resume-a-state-of-other-settings", ["--resume", "{root}/other"],
     ["cannot be resumed", "prompt_length 2", "config.yaml: 3"], True),
    ("resume-with-changed-settings", ["--resume", "{good}", "--batch-size", "4", "--reward", "correct", "--seed", "7"],
     ["--batch-size 4 (the run's: 2)", "--reward correct", "--seed 7 (the run's: 0)", "Only --steps"], True),
    # Folders that cannot be written
    ("train-into-an-unwritable-folder", [*T, *NO_EVAL, "--output-dir", "{unwritable}"],
     ["cannot write the run directory", "--output-dir"], True),
    ("evaluate-into-an-unwritable-folder", ["evaluate", "{good}", "--limit", "2", "--quiet", "--output",
                                            "{unwritable}"], ["cannot write the report", "nothing was scored"], True),
]


@pytest.mark.parametrize("args, words, alone", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_stops_with_one_line(bad, tmp_path, args, words, alone):
    out = tmp_path / "runs"
    places = {"root": bad["root"], "good": bad["good"], "out": out}
    if any("{unwritable}" in a for a in args):
        places["unwritable"] = unwritable(tmp_path)
    trains = args[0] != "evaluate" and "--resume" not in args
    argv = [a.format(**places) for a in args]
    if trains:
        argv = ["--model", str(bad["model"]), *(["--output-dir", str(out)] if "--output-dir" not in args else []),
                *argv]
    result = run_py(*argv)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # progress lines may come before it
    if alone:
        assert len(lines) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    if trains:  # refused before training: no half-made run directory
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_resume_applies_a_new_step_count_and_says_so(bad, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bad["good"], run)
    result = run_py("--resume", run, "--steps", "2", "--no-final-eval", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "--steps 2 applied (the run was started with --steps 1)" in result.stdout
    assert "as the run recorded" in result.stdout  # the dtype the run used, not decided again
    assert json.loads((run / SUMMARY).read_text(), parse_constant=_refuse)["steps"] == 2


# ---- strict JSON -----------------------------------------------------------------------------------------


def _refuse(constant):
    raise AssertionError(f"not strict JSON: {constant}")


def strict_load(text: str):
    """json.loads that refuses NaN and the infinities, as strict parsers (jq, JavaScript, Go) do."""
    return json.loads(text, parse_constant=_refuse)


def test_non_finite_numbers_are_written_as_null():
    value = {"best": -math.inf, "nan": float("nan"), "np": np.float32("nan"), "ok": np.float64(0.25),
             "n": np.int64(3), "nested": [(1.0, math.inf), {"x": [float("-inf")]}], "text": "NaN"}
    assert json_safe(value) == {"best": None, "nan": None, "np": None, "ok": 0.25, "n": 3,
                                "nested": [[1.0, None], {"x": [None]}], "text": "NaN"}
    assert strict_load(dumps_json(value, indent=2))["nested"] == [[1.0, None], {"x": [None]}]
    with pytest.raises(ValueError):  # what json.dumps would write instead is refused, not written
        json.dumps({"best": -math.inf}, allow_nan=False)


# ---- the dtype a run used: recorded, said, reused ------------------------------------------------------------


def test_a_run_records_the_dtype_auto_chose_and_its_later_commands_reuse_it(tiny_model_dir, tmp_path, monkeypatch):
    """`--dtype auto` is decided by a speed probe, which may choose another dtype another time: the run records
    what it used (config.yaml), the header says why, and evaluate and --resume load the model that way again.
    The run is random search without finalists: nothing is validated, so its best validation accuracy is NaN,
    which its summary and checkpoints must write as null."""
    import rlprompt_math.engines as engines
    import rlprompt_math.train as training
    from rlprompt_math.config import RunConfig
    from rlprompt_math.engines.transformers import loading
    from rlprompt_math.evaluation import evaluate_run
    from rlprompt_math.checkpoint import read

    monkeypatch.setattr(loading, "cpu_bf16_probe", lambda: (0.001, 0.004))  # bf16 measures faster here
    config = RunConfig.from_flat({"model": str(tiny_model_dir), "dtype": "auto", "device": "auto", "agent": "random",
                                  "steps": 1, "batch_size": 2, "prompts_per_question": 2, "val_size": 2,
                                  "test_size": 2, "max_new_tokens": 4, "num_problems": 60, "shots": 0,
                                  "prompt_length": 2, "checkpoint_every": 1, "no_final_eval": True, "quiet": True,
                                  "output_dir": str(tmp_path), "name": "r"})
    logs: list[str] = []
    result = training.train(config, log=logs.append)
    run = result.run_dir
    assert result.built.engine.dtype is torch.bfloat16
    header = next(line for line in logs if line.startswith("dtype: "))
    assert "bfloat16 on cpu (--dtype auto chose it" in header and "1.00 ms in bf16 against 4.00 ms in fp32" in header
    saved = yaml.safe_load((run / CONFIG).read_text())
    assert (saved["dtype"], saved["device"]) == ("bfloat16", "cpu")

    # Strict JSON: NaN (not validated) is null in summary.json and in the checkpoints' metadata.
    summary = strict_load((run / SUMMARY).read_text())
    assert summary["best_val_accuracy"] is None
    for line in (run / "samples.jsonl").read_text().splitlines():
        strict_load(line)
    strict_load((run / "prompt.json").read_text())

    # The probe now prefers fp32; the run's later commands still load bf16.
    monkeypatch.setattr(loading, "cpu_bf16_probe", lambda: (0.004, 0.001))
    loaded = []
    real_load_engine = engines.load_engine
    monkeypatch.setattr(engines, "load_engine", lambda cfg: loaded.append(real_load_engine(cfg)) or loaded[-1])
    eval_logs: list[str] = []
    report = evaluate_run(run, limit=2, progress=False, log=eval_logs.append, reference_prompts=("",))
    assert [e.dtype for e in loaded] == [torch.bfloat16]
    assert any(line == "dtype: bfloat16 on cpu (as the run recorded)" for line in eval_logs), eval_logs
    strict_load(report["_paths"]["report"].read_text())

    # A report that cannot be written after the scoring (a full disk): the table is shown, not lost.
    import rlprompt_math.evaluation as evaluation
    from rlprompt_math.config import ConfigError

    def disk_full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluation, "write_report", disk_full)
    shown: list[str] = []
    with pytest.raises(ConfigError, match="No space left on device; the table above is the result"):
        evaluate_run(run, limit=2, progress=False, log=shown.append, reference_prompts=("",))
    assert any("learned policy" in line and "(no prompt)" in line for line in shown), shown

    resumed = training.resume_config(run, steps=2, log=lambda _: None)
    assert resumed.engine.dtype == "bfloat16"
    built = training.build(resumed, log=lambda _: None)
    assert built.engine.dtype is torch.bfloat16 and built.agent.step == 1
    state_meta = read(run / STATE_LAST, "rlprompt-math-train-state")[1]
    assert state_meta["best_val"] is None  # -inf before any validation: null, read back as -inf
    assert built.agent.best_val == -math.inf
    read(run / POLICY_LAST, "rlprompt-math-policy")


def test_an_explicit_dtype_is_recorded_as_given(tiny_model_dir, tmp_path):
    from rlprompt_math.config import RunConfig
    from rlprompt_math.engines import pin_engine_settings

    config = RunConfig.from_flat({"model": str(tiny_model_dir), "dtype": "fp32", "device": "cpu"})
    assert pin_engine_settings(config.engine) == "float32 on cpu (as asked)"
    assert (config.engine.dtype, config.engine.device) == ("float32", "cpu")
