"""Settings and wiring: one home for every default, every flag reaching what it configures, one comparison.

These fail on the bugs they were written for: a flag that never reached its agent (--finalists and
random search), defaults written in several places, and training's final comparison and `evaluate`
comparing against different prompts. The command line is checked against values written here by hand,
not against the fields it is generated from.
"""

import dataclasses

import pytest
import yaml
from click.testing import CliRunner
from conftest import FAST_FLAGS, FAST_RUN

import rlprompt_math.train as training
from rlprompt_math.cli import main
from rlprompt_math.agents import AGENTS, check_config
from rlprompt_math.cli import train as train_command
from rlprompt_math.config import (
    REFERENCE_PROMPTS,
    AlgorithmConfig,
    ConfigError,
    DataConfig,
    EngineConfig,
    GradientConfig,
    OracleConfig,
    PolicyConfig,
    RunConfig,
    flat_field_names,
)
from rlprompt_math.vocab import EMPTY


class Parsed(Exception):
    """Raised in place of training: the command line parsed its options into this config."""


def _parsed(monkeypatch, args) -> RunConfig:
    """The config that `run.py ARGS` would train (training itself is not run)."""
    def stop(config, **_):
        raise Parsed(config)

    monkeypatch.setattr(training, "train", stop)
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, Parsed), result.output
    return result.exception.args[0]


def test_no_flags_train_the_default_config(monkeypatch):
    assert _parsed(monkeypatch, []) == RunConfig()
    assert _parsed(monkeypatch, ["train"]) == RunConfig()


# Written by hand, not derived from the fields: flags (options renamed from their field, repeated ones, a
# choice, numbers, booleans both ways) and the config they must give, then the same as a --config file.
HAND_WRITTEN_FLAGS = ["--seed", "3", "--format", "gsm8k", "--engine", "openai", "--base-url", "http://a:8000/v1",
                      "--base-url", "http://b:8000/v1", "--reward", "correct", "--reward", "partial:0.5",
                      "--max-new-tokens", "7", "--no-stop-at-answer", "--policy", "refiner", "--no-empty-action",
                      "--lr", "0.5", "--normalize-rewards", "--gumbel-tau-end", "0.2"]
HAND_WRITTEN_YAML = """\
seed: 3
fmt: gsm8k
engine: openai
base_url: [http://a:8000/v1, http://b:8000/v1]
rewards: [correct, "partial:0.5"]
max_new_tokens: 7
stop_at_answer: false
policy: refiner
empty_action: false
lr: 0.5
normalize_rewards: true
gumbel_tau_end: 0.2
"""


def _hand_written_config() -> RunConfig:
    return RunConfig(seed=3, data=DataConfig(fmt="gsm8k"),
                     engine=EngineConfig(engine="openai", base_url=("http://a:8000/v1", "http://b:8000/v1")),
                     oracle=OracleConfig(rewards=("correct", "partial:0.5"), max_new_tokens=7, stop_at_answer=False),
                     policy=PolicyConfig(policy="refiner", empty_action=False),
                     algorithm=AlgorithmConfig(lr=0.5, normalize_rewards=True),
                     gradient=GradientConfig(gumbel_tau_end=0.2))


def test_flags_land_in_their_fields(monkeypatch):
    config = _parsed(monkeypatch, HAND_WRITTEN_FLAGS)
    assert config == _hand_written_config()
    assert config.algorithm.seed == 3
    assert type(config.oracle.max_new_tokens) is int and type(config.algorithm.lr) is float


def test_a_config_file_lands_like_the_flags_and_flags_override_it(monkeypatch, tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(HAND_WRITTEN_YAML)
    assert _parsed(monkeypatch, ["--config", str(path)]) == _hand_written_config()
    assert RunConfig.from_flat(yaml.safe_load(HAND_WRITTEN_YAML)) == _hand_written_config()  # as config.yaml is read
    overridden = _parsed(monkeypatch, ["--config", str(path), "--max-new-tokens", "9", "--reward", "format"])
    expected = _hand_written_config()
    expected.oracle.max_new_tokens, expected.oracle.rewards = 9, ("format",)
    assert overridden == expected


def test_unknown_settings_and_choices_are_rejected_by_name(monkeypatch, tmp_path):
    monkeypatch.setattr(training, "train", lambda config, **_: pytest.fail(f"trained {config}"))
    for text, unknown in (("max_new_token: 7\n", "'max_new_token'"),
                          ("oracle:\n  max_new_tokens: 7\n", "'oracle'")):  # the file is flat, as config.yaml
        path = tmp_path / "settings.yaml"
        path.write_text(text)
        result = CliRunner().invoke(main, ["--config", str(path)])
        assert result.exit_code == 2 and f"unknown settings [{unknown}]" in result.output, result.output
    with pytest.raises(ConfigError, match=r"unknown settings \['max_new_token'\]"):
        RunConfig.from_flat({"max_new_token": 7})
    result = CliRunner().invoke(main, ["--policy", "transformer"])
    assert result.exit_code == 2 and "Invalid value for '--policy'" in result.output, result.output
    assert "'autoregressive'" in result.output  # the message lists the choices


def test_an_older_runs_config_yaml_reads_under_todays_names(tmp_path):
    """The config.yaml of a run written before some settings were renamed (and before stop_at_answer and
    finalists existed) gives the settings it ran with (resuming reads it as evaluating does: `saved_config`)."""
    from rlprompt_math.runlog import RunDir

    older_names = {"policy_width": "hidden_size", "sample_temperature": "temperature", "sample_top_k": "top_k",
                   "gumbel_tau": "gumbel_temperature", "gumbel_tau_end": "gumbel_temperature_end"}
    ran_with = {"policy_width": 16, "sample_temperature": 0.7, "sample_top_k": 5, "gumbel_tau": 2.0,
                "gumbel_tau_end": 0.5}
    settings = {**RunConfig().to_flat(), **ran_with}
    for missing in ("quiet", "stop_at_answer", "finalists"):
        del settings[missing]
    older = {older_names.get(key, key): value for key, value in settings.items()}
    RunDir(tmp_path / "older").write_config(older)
    config = training.resume_config(tmp_path / "older")
    assert config.to_flat() == {**RunConfig().to_flat(), **ran_with, "stop_at_answer": False, "finalists": 0,
                                "resume": str(tmp_path / "older")}
    with pytest.raises(ConfigError, match=r"unknown settings \['gumbel_temperature', 'gumbel_temperature_end', "
                                          r"'hidden_size', 'temperature', 'top_k'\]"):
        RunConfig.from_flat(older)  # the older names are read from run directories only


def test_every_train_option_has_help():
    assert all(option.help for option in train_command.params), [o.name for o in train_command.params if not o.help]


def test_evaluate_defaults_to_the_final_comparison(monkeypatch, tmp_path):
    """`evaluate` with no options scores what training's final comparison scored: the test split, as many
    problems, the best checkpoint, the reference prompts, the run's decoding."""
    import rlprompt_math.evaluation as evaluation

    calls = []

    def capture(run_dir, **kwargs):
        calls.append(kwargs)
        raise Parsed(run_dir)

    monkeypatch.setattr(evaluation, "evaluate_run", capture)
    for args, output in (([], None), (["--output-dir", "out"], "out"), (["--output", "out"], "out")):
        result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--quiet", *args])
        assert isinstance(result.exception, Parsed), result.output
        assert calls[-1]["output"] == output
    defaults = calls[0]
    assert defaults["limit"] == RunConfig().test_size and defaults["split"] == "test"
    assert defaults["checkpoint"] == "best" and defaults["max_new_tokens"] is None and defaults["model"] is None
    assert defaults["reference_prompts"] == list(REFERENCE_PROMPTS) and defaults["problems"] is None
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--no-default-references", "--reference-prompt", "A.",
                                       "--reference-prompt", "B."])
    assert isinstance(result.exception, Parsed), result.output
    assert calls[-1]["reference_prompts"] == ["A.", "B."]


def test_flat_round_trip_and_no_drifting_defaults(tiny_engine):
    config = RunConfig()
    assert RunConfig.from_flat(config.to_flat()) == config
    assert config.algorithm.finalists == 0 and config.data.difficulty == "1,2" and config.data.kinds == "arithmetic"
    # The Python entry points with no settings build the environment that a run with no flags trains on.
    from rlprompt_math.data import generate_problems
    from rlprompt_math.envs import PromptRefineEnv, make_env

    problems = generate_problems(10, seed=0)
    run_env = training.build_env(config, tiny_engine, problems)
    python_env = make_env(tiny_engine, problems, split=None)
    class_env = PromptRefineEnv(tiny_engine, problems, run_env.vocab, run_env.reward_mix)
    for env in (python_env, class_env):
        assert env.decoding == run_env.decoding and env.prompt_length == run_env.prompt_length
        assert env.action_space == run_env.action_space
    assert python_env.vocab.token_ids == run_env.vocab.token_ids
    assert ([(r.name, r.weight) for r in python_env.reward_mix.rewards]
            == [(r.name, r.weight) for r in run_env.reward_mix.rewards])


# flag -> (CLI value, what it must configure in the built run). `None` for settings that only shape the
# run as a whole; they are checked on the run's config.
NON_DEFAULT = {
    "seed": ("3", lambda b: b.config.seed == 3 and b.config.algorithm.seed == 3),
    "val_size": ("5", lambda b: len(b.val_problems) == 5 and len(b.agent.val_problems) == 5),
    "test_size": ("7", lambda b: len(b.test_problems) == 7),
    # The final comparison's few-shot reference (what it adds: test_evaluation, test_cli).
    "reference_shots": ("1", lambda b: b.config.reference_shots == 1),
    "name": ("wired", lambda b: b.run.path.name == "wired"),
    "num_problems": ("150", lambda b: sum(map(len, b.splits.values())) == 150),
    "kinds": ("fractions", lambda b: {p.extra["kind"] for p in b.splits["train"]} == {"fractions"}),
    "difficulty": ("3", lambda b: {p.extra["difficulty"] for p in b.splits["train"]} == {3}),
    "dtype": ("float32", lambda b: str(b.engine.dtype) == "torch.float32"),
    "device": ("cpu", lambda b: str(b.engine.device) == "cpu"),
    "template": ("{prompt} {question}", lambda b: b.engine.template == "{prompt} {question}"),
    "rewards": ("correct", lambda b: b.env.reward_mix.names == ["correct"]),
    "max_new_tokens": ("5", lambda b: b.env.decoding.max_new_tokens == 5),
    "stop_at_answer": (None, lambda b: b.env.decoding.stop_at_answer is False),
    # After the exemplar and answer-form slots, if any (EXEMPLAR_FLAGS): 3 instruction slots.
    "prompt_length": ("3", lambda b: b.env.prompt_length == 3
                      and b.env.action_space.shape == (len(b.env.space.factor_sizes) + 3,)
                      and b.env.space.slot_sizes[-3:] == [len(b.env.vocab)] * 3),
    "action_vocab": ("frequent:50", lambda b: b.env.vocab.spec.startswith("frequent:50")),
    "empty_action": (None, lambda b: EMPTY not in b.env.vocab.token_ids),
}
POLICY_FLAGS = {  # reinforce only: the policy it trains
    "policy": ("refiner", lambda b: b.agent.policy.kind == "refiner" and b.agent.policy.prompt_length == 3),
    "policy_width": ("16", lambda b: b.agent.policy.width == 16),
    # Off: the refiner's exemplar slots are plain heads (with --shots 2 on reinforce, EXEMPLAR_FLAGS).
    "exemplar_pointer": (None, lambda b: b.agent.policy.shots == 0 and "pointer_shots" not in b.agent.policy.config()),
    "pointer_scale": ("3.5", lambda b: b.config.policy.pointer_scale == 3.5),
}
FIXED_FLAGS = {"fixed_prompt": ("Be exact.", lambda b: b.agent.policy.text == "Be exact.")}
EXEMPLAR_AGENTS = ("reinforce", "random", "knn", "cluster")  # by hand: the agents whose prompts have exemplar slots
GRADIENT_AGENTS = ("soft-prompt", "pez", "gumbel")  # by hand: the agents trained by gradients through the LLM
EXEMPLAR_FLAGS = {  # EXEMPLAR_AGENTS: the prompt space's exemplar slots
    "shots": ("2", lambda b: b.env.space.shots == 2 and b.env.space.factor_sizes == [4, 4, 1]
              and b.env.action_space.shape == (2 + 1 + 3,)
              and (b.agent.policy is None or b.agent.policy.slot_sizes == b.env.space.slot_sizes)),
    "exemplar_pool": ("3", lambda b: len(b.env.space.pool) == 3
                      and {p.id for p in b.env.space.pool.problems} <= {p.id for p in b.splits["train"]}),
    "answer_forms": ("bare", lambda b: b.env.space.forms == ("bare",)),
}
# The differentiable routes (soft-prompt, pez, gumbel): `--soft-init random` starts from --prompt-length rows.
GRADIENT_VALUES = {"grad_lr": 0.05, "gumbel_lr": 0.002, "soft_init": "random", "init_text": "Be exact.",
                   "loss_target": "own", "target_questions": 7, "gumbel_tau": 2.0, "gumbel_tau_end": 0.5}
GRADIENT_CHECKS = {"soft-prompt": lambda b: tuple(b.agent.policy.embeddings.shape) == (3, b.engine.hidden_size),
                   "pez": lambda b: len(b.agent.actions()) == 3 and b.agent.optimizer.param_groups[0]["lr"] == 0.05,
                   "gumbel": lambda b: b.agent.optimizer.param_groups[0]["lr"] == 0.002}
ALGORITHM_VALUES = {"steps": 3, "batch_size": 2, "prompts_per_question": 3, "lr": 0.05, "network_lr": 0.02,
                    "baseline": "batch_mean",
                    "moving_average_decay": 0.5, "normalize_rewards": True, "entropy_coef": 0.02,
                    "entropy_schedule": "cosine", "max_grad_norm": 0.5, "sample_temperature": 0.7, "sample_top_k": 5,
                    "value_lr": 0.01, "eval_every": 2, "checkpoint_every": 2, "finalists": 2,
                    "optimizer": "sgd", "clusters": 2, "max_oracle_pairs": 100_000, "update_epochs": 3,
                    "clip_ratio": 0.3}
# Checked elsewhere: the engine fields need other models or CUDA, the data-file fields a dataset file
# (test_data, test_cli), the served engine's a server (test_engine_openai); resume in test_cli; output_dir is
# the parent of `name` (checked below).
ELSEWHERE = {"model", "load_in_8bit", "dataset", "fmt", "question_field", "answer_field", "kind_field", "hub_split",
             "skip_bad_rows", "resume", "output_dir", "no_final_eval", "quiet", "agent", "engine", "base_url",
             "served_model", "request_timeout", "max_retries", "concurrency", "prompts_per_request", "halving_steps"}


def _flag(name, value):
    option = next(p for p in train_command.params if p.name == name)
    if value is None:  # a boolean: the flag that is not the default
        return [option.secondary_opts[0] if option.default else option.opts[0]]
    return [option.opts[0], value]


@pytest.mark.parametrize("agent", AGENTS)
def test_every_flag_reaches_the_object_it_configures(agent, tiny_model_dir, tmp_path, monkeypatch):
    algorithm = {f.name for f in dataclasses.fields(RunConfig().algorithm) if f.metadata.get("cli", True)}
    covered = (set(NON_DEFAULT) | set(POLICY_FLAGS) | set(FIXED_FLAGS) | set(EXEMPLAR_FLAGS) | set(ALGORITHM_VALUES)
               | set(GRADIENT_VALUES) | ELSEWHERE)
    assert covered == set(flat_field_names()) and set(ALGORITHM_VALUES) == algorithm - ELSEWHERE  # a new flag needs a check

    captured, real_build = {}, training.build

    class Built(Exception):
        pass

    def build_and_stop(config, **kwargs):
        captured["built"] = real_build(config, **kwargs)
        raise Built

    monkeypatch.setattr(training, "build", build_and_stop)
    flags = {**NON_DEFAULT, **(POLICY_FLAGS if agent in ("reinforce", "gumbel") else {}),
             **(FIXED_FLAGS if agent == "fixed" else {}), **(EXEMPLAR_FLAGS if agent in EXEMPLAR_AGENTS else {})}
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
    if agent == "reinforce":  # the refiner (POLICY_FLAGS): its network at --network-lr, its per-choice biases at --lr
        groups = built.agent.optimizer.param_groups
        assert type(built.agent.optimizer).__name__ == "SGD" and [g["lr"] for g in groups][:2] == [0.05, 0.02]
        assert groups[0]["params"][0] is built.agent.policy.slot_bias
        assert groups[2]["lr"] < 0.02 and any(p is built.agent.policy.slots.weight for p in groups[2]["params"])  # tied words
    if agent == "cluster":  # --clusters reaches k-means (the problems are of one kind: without it, one cluster)
        assert len(built.agent.searches) == 2
    if agent in GRADIENT_AGENTS:
        for name, value in GRADIENT_VALUES.items():
            assert getattr(built.agent.gradient, name) == value, name
        assert GRADIENT_CHECKS[agent](built)
    saved = built.run.read_config()
    assert set(saved) == set(flat_field_names()) - {"quiet"}
    assert RunConfig.from_flat(saved).to_flat() == {**built.config.to_flat(), "quiet": False}


def test_random_search_validates_the_given_number_of_finalists(tiny_engine):
    from rlprompt_math.data import generate_problems

    config = RunConfig.from_flat({"agent": "random", "steps": 2, "batch_size": 2, "prompts_per_question": 3,
                                  "finalists": 2, "prompt_length": 2, "max_new_tokens": 4})
    problems = generate_problems(30, seed=0, kinds=["arithmetic"])
    env = training.build_env(config, tiny_engine, problems)
    agent, _ = training.make_agent(config, env, engine=tiny_engine, val_problems=problems[:3])
    summary = agent.train(progress=False)
    assert summary["oracle_pairs"] == 2 * 3 * 2 + 2 * 3  # training, then 2 finalists x 3 validation questions
    config.algorithm.finalists = 0
    agent, _ = training.make_agent(config, env, engine=tiny_engine, val_problems=problems[:3])
    assert agent.train(progress=False)["oracle_pairs"] == 2 * 3 * 2


def test_halving_steps_reach_reinforce_and_are_checked(tiny_model_dir, tmp_path, monkeypatch):
    """--halving-steps (not in the every-flag test: it needs an unconditioned policy and finalists) reaches the
    agent's successive halving; the settings it cannot work with are refused by name."""
    built = training.build(RunConfig.from_flat({
        "model": str(tiny_model_dir), "steps": 4, "halving_steps": 2, "finalists": 2, "batch_size": 2,
        "prompts_per_question": 2, "prompt_length": 2, "num_problems": 60, "output_dir": str(tmp_path),
        "quiet": True}), log=lambda _: None)
    assert built.agent.config.halving_steps == 2 and built.agent.halving.rungs == [(4, 2)]  # 8 pairs: 4 prompts x 2 questions
    for flags, message in ((["--halving-steps", "4", "--steps", "4", "--finalists", "1"], "fewer than --steps"),
                           (["--halving-steps", "1", "--finalists", "0"], "--finalists >= 1"),
                           (["--halving-steps", "1", "--finalists", "1", "--policy", "refiner"], "unconditioned")):
        result = CliRunner().invoke(main, ["--model", str(tiny_model_dir), "--output-dir", str(tmp_path), *flags])
        assert result.exit_code != 0 and message in result.output and "--halving-steps" in result.output, flags


def test_prompt_length_has_one_route(tiny_engine):
    from rlprompt_math.agents import ReinforceAgent
    from rlprompt_math.data import generate_problems
    from rlprompt_math.policies import build_policy

    config = RunConfig.from_flat({"prompt_length": 3})
    env = training.build_env(config, tiny_engine, generate_problems(10, seed=0))
    policy = build_policy("unconditioned", engine=tiny_engine, vocab=env.vocab, prompt_length=2)
    with pytest.raises(ValueError, match="the env takes 3"):
        ReinforceAgent(env, policy, config.algorithm)


@pytest.mark.parametrize("agent", ["reinforce", "random"])
def test_final_comparison_and_evaluate_report_the_same_systems(agent, tiny_model_dir, tmp_path,
                                                               evaluate_repeats_final_comparison):
    result = CliRunner().invoke(main, ["--agent", agent, "--model", str(tiny_model_dir), "--output-dir",
                                       str(tmp_path), "--name", "r", *FAST_FLAGS], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    evaluate_repeats_final_comparison(tmp_path / "r", limit=FAST_RUN["test_size"])  # the final comparison's questions


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after the progress lines: one line, no traceback
    assert "Traceback" not in result.output and last.startswith("Error: "), result.output
    for needle in needles:
        assert needle in last, (needle, result.output)


def test_user_errors_are_one_line_messages(tiny_model_dir, tmp_path):
    base = ["--model", str(tiny_model_dir), "--output-dir", str(tmp_path), *FAST_FLAGS]
    plugin = tmp_path / "my_reward.py"
    plugin.write_text("def bad(prompts, completions, **kwargs):\n    raise ValueError('boom')\n")
    _one_line_error(CliRunner().invoke(main, [*base, "--reward", f"{plugin}:bad"]), "'bad' raised ValueError: boom")
    _one_line_error(CliRunner().invoke(main, [*base, "--reward", f"{tmp_path / 'nope.py'}:fn"]),
                    "reward file not found", "nope.py")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "What is 1+1?", "answer": "2"}\n{"question": "What is 2+2?", "answer": 4\n')
    _one_line_error(CliRunner().invoke(main, [*base, "--dataset", str(broken)]), "broken.jsonl:2", "not valid JSON")
    _one_line_error(CliRunner().invoke(main, [*base, "--finalists", "-1"]), "--finalists must be >= 0")
    # The agent names are the registry's (one spelling, on the classes): an unknown one is refused with them all.
    _one_line_error(CliRunner().invoke(main, [*base, "--agent", "bogus"]), "--agent must be one of reinforce, random, "
                    "fixed, soft-prompt, pez, gumbel", "'bogus'")


def test_python_users_train_through_the_same_wiring(tiny_model_dir, tmp_path):
    config = RunConfig.from_flat({**FAST_RUN, "model": str(tiny_model_dir), "steps": 2, "output_dir": str(tmp_path),
                                  "name": "py"})
    result = training.train(config, log=lambda _: None)
    assert result.run_dir == tmp_path / "py" and result.summary["steps"] == 2
    assert "learned policy" in result.report["systems"] and "(no prompt)" in result.report["systems"]


@pytest.mark.parametrize("args, shots", [
    ([], 2),                                                   # the default run: 2 exemplar slots
    (["--agent", "random"], 2),
    (["--agent", "knn"], 2),                                   # the conditioned baselines search exemplars too
    (["--agent", "cluster"], 2),
    (["--policy", "refiner"], 2),
    (["--shots", "0"], 0),                                     # instruction words only, as asked
    (["--shots", "3"], 3),
    (["--policy", "autoregressive"], 0),                       # writes instruction tokens only
    (["--agent", "soft-prompt"], 0),                           # the gradient routes train tokens or embeddings
    (["--agent", "pez"], 0),
])
def test_shots_default_to_exemplars_where_they_can_be_chosen(monkeypatch, args, shots):
    config = _parsed(monkeypatch, args)
    assert config.policy.shots is None or config.policy.shots == shots  # unset until validated
    assert check_config(config).policy.shots == shots
