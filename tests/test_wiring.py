"""Settings and wiring: one home for every default, every flag reaching what it configures, one comparison.

These fail on the bugs of issue 16: a flag that never reached its agent (--finalists and random
search), defaults written in several places, and training's final comparison and `evaluate`
comparing against different prompts.
"""

import dataclasses

import pytest
from click.testing import CliRunner

import rlprompt_math.train as training
from rlprompt_math.cli import evaluate, main
from rlprompt_math.cli import train as train_command
from rlprompt_math.config import (
    AGENTS,
    BASELINES,
    GRADIENT_AGENTS,
    ENTROPY_SCHEDULES,
    POLICY_KINDS,
    RunConfig,
    cli_fields,
    field_default,
    flat_field_names,
)
from rlprompt_math.vocab import EMPTY

FAST = ["--dtype", "float32", "--steps", "3", "--batch-size", "2", "--prompts-per-question", "2",
        "--val-size", "4", "--test-size", "6", "--eval-every", "2", "--max-new-tokens", "4", "--quiet",
        "--num-problems", "200"]


def test_train_options_are_the_config_fields():
    options = {p.name: p for p in train_command.params if p.name != "config"}
    assert set(options) == set(flat_field_names())
    for f, doc in cli_fields():
        option = options[f.name]
        default = option.default if not option.multiple else tuple(option.default)
        assert default == f.default, f.name
        assert option.help == doc and doc, f.name
    for name, choices in (("agent", AGENTS), ("policy", POLICY_KINDS), ("baseline", BASELINES),
                          ("entropy_schedule", ENTROPY_SCHEDULES)):
        assert tuple(options[name].type.choices) == choices
    # `evaluate` options that mean a train setting take its default; output directories share a name.
    limit = next(p for p in evaluate.params if p.name == "limit")
    assert limit.default == field_default("test_size")
    assert "--output-dir" in next(p for p in evaluate.params if p.name == "output").opts


def test_flat_round_trip_and_no_drifting_defaults():
    config = RunConfig()
    assert RunConfig.from_flat(config.to_flat()) == config
    import inspect

    from rlprompt_math.envs.prompt_refine import make_env
    from rlprompt_math.oracle import Decoding

    env_defaults = inspect.signature(make_env).parameters
    assert env_defaults["max_new_tokens"].default == config.oracle.max_new_tokens == Decoding().max_new_tokens
    assert env_defaults["prompt_length"].default == config.policy.prompt_length
    assert tuple(env_defaults["rewards"].default) == config.oracle.rewards
    assert config.algorithm.finalists == 0 and config.data.difficulty == "1,2" and config.data.kinds == "arithmetic"


# flag -> (CLI value, what it must configure in the built run). `None` for settings that only shape the
# run as a whole; they are checked on the run's config.
NON_DEFAULT = {
    "seed": ("3", lambda b: b.config.seed == 3 and b.config.algorithm.seed == 3),
    "val_size": ("5", lambda b: len(b.val_problems) == 5 and len(b.agent.val_problems) == 5),
    "test_size": ("7", lambda b: len(b.test_problems) == 7),
    "name": ("wired", lambda b: b.run.path.name == "wired"),
    "num_problems": ("150", lambda b: sum(map(len, b.splits.values())) == 150),
    "kinds": ("fractions", lambda b: {p.extra["kind"] for p in b.splits["train"]} == {"fractions"}),
    "difficulty": ("3", lambda b: {p.extra["difficulty"] for p in b.splits["train"]} == {3}),
    "dtype": ("float32", lambda b: str(b.llm.dtype) == "torch.float32"),
    "device": ("cpu", lambda b: str(b.llm.device) == "cpu"),
    "template": ("{prompt} {question}", lambda b: b.llm.template == "{prompt} {question}"),
    "rewards": ("correct", lambda b: b.env.reward_mix.names == ["correct"]),
    "max_new_tokens": ("5", lambda b: b.env.decoding.max_new_tokens == 5),
    "stop_at_answer": (None, lambda b: b.env.decoding.stop_at_answer is False),
    "prompt_length": ("3", lambda b: b.env.prompt_length == 3 and b.env.action_space.shape == (3,)),
    "action_vocab": ("frequent:50", lambda b: b.env.vocab.spec.startswith("frequent:50")),
    "empty_action": (None, lambda b: EMPTY not in b.env.vocab.token_ids),
}
POLICY_FLAGS = {  # reinforce only: the policy it trains
    "policy": ("refiner", lambda b: b.agent.policy.kind == "refiner" and b.agent.policy.prompt_length == 3),
    "hidden_size": ("16", lambda b: b.agent.policy.hidden_size == 16),
}
FIXED_FLAGS = {"fixed_prompt": ("Be exact.", lambda b: b.agent.policy.text == "Be exact.")}
# The differentiable routes (soft-prompt, pez, gumbel): `--soft-init random` starts from --prompt-length rows.
GRADIENT_VALUES = {"grad_lr": 0.05, "gumbel_lr": 0.002, "soft_init": "random", "init_text": "Be exact.", "gumbel_temperature": 2.0,
                   "loss_target": "own", "target_questions": 7,
                   "gumbel_temperature_end": 0.5}
GRADIENT_CHECKS = {"soft-prompt": lambda b: tuple(b.agent.policy.embeddings.shape) == (3, b.llm.hidden_size),
                   "pez": lambda b: len(b.agent.actions()) == 3 and b.agent.optimizer.param_groups[0]["lr"] == 0.05,
                   "gumbel": lambda b: b.agent.optimizer.param_groups[0]["lr"] == 0.002}
ALGORITHM_VALUES = {"steps": 3, "batch_size": 2, "prompts_per_question": 3, "lr": 0.05, "baseline": "batch_mean",
                    "moving_average_decay": 0.5, "normalize_rewards": True, "entropy_coef": 0.02,
                    "entropy_schedule": "cosine", "max_grad_norm": 0.5, "temperature": 0.7, "top_k": 5,
                    "value_lr": 0.01, "eval_every": 2, "checkpoint_every": 2, "finalists": 2,
                    "optimizer": "sgd"}
# Checked elsewhere: the engine fields need other models or CUDA, the data-file fields a dataset file
# (test_data, test_cli), the served engine's a server (test_served); resume in test_cli; output_dir is
# the parent of `name` (checked below).
ELSEWHERE = {"model", "load_in_8bit", "dataset", "fmt", "question_field", "answer_field", "hub_split",
             "skip_bad_rows", "resume", "output_dir", "no_final_eval", "quiet", "agent", "engine", "base_url",
             "served_model", "request_timeout", "max_retries", "concurrency", "prompts_per_request"}


def _flag(name, value):
    option = next(p for p in train_command.params if p.name == name)
    if value is None:  # a boolean: the flag that is not the default
        return [option.secondary_opts[0] if option.default else option.opts[0]]
    return [option.opts[0], value]


@pytest.mark.parametrize("agent", AGENTS)
def test_every_flag_reaches_the_object_it_configures(agent, tiny_model_dir, tmp_path, monkeypatch):
    algorithm = {f.name for f in dataclasses.fields(RunConfig().algorithm) if f.metadata.get("cli", True)}
    covered = (set(NON_DEFAULT) | set(POLICY_FLAGS) | set(FIXED_FLAGS) | set(ALGORITHM_VALUES) | set(GRADIENT_VALUES)
               | ELSEWHERE)
    assert covered == set(flat_field_names()) and set(ALGORITHM_VALUES) == algorithm  # a new flag needs a check

    captured, real_build = {}, training.build

    class Built(Exception):
        pass

    def build_and_stop(config, **kwargs):
        captured["built"] = real_build(config, **kwargs)
        raise Built

    monkeypatch.setattr(training, "build", build_and_stop)
    flags = {**NON_DEFAULT, **(POLICY_FLAGS if agent in ("reinforce", "gumbel") else {}),
             **(FIXED_FLAGS if agent == "fixed" else {})}
    args = ["--agent", agent, "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--quiet"]
    for name, (value, _) in flags.items():
        args += _flag(name, value)
    for name, value in {**ALGORITHM_VALUES, **GRADIENT_VALUES}.items():
        args += _flag(name, None if value is True else str(value))
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, Built), result.output
    built = captured["built"]
    assert built.run.path == tmp_path / "wired" and built.config.agent == agent
    for name, (_, check) in flags.items():
        assert check(built), name
    if agent != "fixed":  # random search spends the same budget and picks finalists the same way
        for name, value in ALGORITHM_VALUES.items():
            assert getattr(built.agent.config, name) == value, name
    if agent == "reinforce":
        assert type(built.agent.optimizer).__name__ == "SGD" and built.agent.optimizer.param_groups[0]["lr"] == 0.05
    if agent in GRADIENT_AGENTS:
        for name, value in GRADIENT_VALUES.items():
            assert getattr(built.agent.gradient, name) == value, name
        assert GRADIENT_CHECKS[agent](built)
    saved = built.run.read_config()
    assert set(saved) == set(flat_field_names()) - {"quiet"}
    assert RunConfig.from_flat(saved).to_flat() == {**built.config.to_flat(), "quiet": False}


def test_random_search_validates_the_given_number_of_finalists(tiny_llm):
    from rlprompt_math.data import generate_problems

    config = RunConfig.from_flat({"agent": "random", "steps": 2, "batch_size": 2, "prompts_per_question": 3,
                                  "finalists": 2, "prompt_length": 2, "max_new_tokens": 4})
    problems = generate_problems(30, seed=0, kinds=["arithmetic"])
    env = training.make_env(config, tiny_llm, problems)
    agent, _ = training.make_agent(config, env, llm=tiny_llm, val_problems=problems[:3])
    summary = agent.train(progress=False)
    assert summary["oracle_pairs"] == 2 * 3 * 2 + 2 * 3  # training, then 2 finalists x 3 validation questions
    config.algorithm.finalists = 0
    agent, _ = training.make_agent(config, env, llm=tiny_llm, val_problems=problems[:3])
    assert agent.train(progress=False)["oracle_pairs"] == 2 * 3 * 2


def test_prompt_length_has_one_route(tiny_llm):
    from rlprompt_math.agents import ReinforceAgent
    from rlprompt_math.data import generate_problems
    from rlprompt_math.policies import build_policy

    config = RunConfig.from_flat({"prompt_length": 3})
    env = training.make_env(config, tiny_llm, generate_problems(10, seed=0))
    policy = build_policy("unconditioned", llm=tiny_llm, vocab=env.vocab, prompt_length=2)
    with pytest.raises(ValueError, match="the env takes 3"):
        ReinforceAgent(env, policy, config.algorithm)


@pytest.mark.parametrize("agent", ["reinforce", "random"])
def test_final_comparison_and_evaluate_report_the_same_systems(agent, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, ["--agent", agent, "--model", str(tiny_model_dir), "--output-dir",
                                       str(tmp_path), "--name", "r", *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from conftest import evaluate_repeats_final_comparison

    evaluate_repeats_final_comparison(tmp_path / "r", limit=6)


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after the progress lines: one line, no traceback
    assert "Traceback" not in result.output and last.startswith("Error: "), result.output
    for needle in needles:
        assert needle in last, (needle, result.output)


def test_user_errors_are_one_line_messages(tiny_model_dir, tmp_path):
    base = ["--model", str(tiny_model_dir), "--output-dir", str(tmp_path), *FAST]
    plugin = tmp_path / "my_reward.py"
    plugin.write_text("def bad(prompts, completions, **kwargs):\n    raise ValueError('boom')\n")
    _one_line_error(CliRunner().invoke(main, [*base, "--reward", f"{plugin}:bad"]), "'bad' raised ValueError: boom")
    _one_line_error(CliRunner().invoke(main, [*base, "--reward", f"{tmp_path / 'nope.py'}:fn"]),
                    "reward file not found", "nope.py")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "What is 1+1?", "answer": "2"}\n{"question": "What is 2+2?", "answer": 4\n')
    _one_line_error(CliRunner().invoke(main, [*base, "--dataset", str(broken)]), "broken.jsonl:2", "not valid JSON")
    _one_line_error(CliRunner().invoke(main, [*base, "--finalists", "-1"]), "--finalists must be >= 0")


def test_python_users_train_through_the_same_wiring(tiny_model_dir, tmp_path):
    config = RunConfig.from_flat({"model": str(tiny_model_dir), "dtype": "float32", "steps": 2, "batch_size": 2,
                                  "prompts_per_question": 2, "val_size": 3, "test_size": 4, "max_new_tokens": 4,
                                  "num_problems": 100, "output_dir": str(tmp_path), "name": "py", "quiet": True})
    result = training.train(config, log=lambda _: None)
    assert result.run_dir == tmp_path / "py" and result.summary["steps"] == 2
    assert "learned policy" in result.report["systems"] and "(no prompt)" in result.report["systems"]
