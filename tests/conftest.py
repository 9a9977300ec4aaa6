"""Shared test helpers, each written once. Fixtures for what needs a model, a folder or patching (the tiny
model and its engine, the checks that train or run the command line); plain names for settings, test doubles
and file readers, which tests import (`from conftest import FAST_RUN, BanditEnv`) because tables built at
import time (parametrize lists, module constants) cannot use fixtures."""

from __future__ import annotations

import contextlib
import csv
import functools

import numpy as np
import pytest
import torch

from rlprompt_math.data import Problem

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "What is 36+32? The answer is 68.", "Let's think step by step.", "Answer with only the final number.",
    "Give the answer as a single number.", "Tom has 3 apples and buys 5 more. How many apples?",
    "Solve for x: 2x + 3 = 11. x = 4", "What is 15% of 80? 12", "What is 3/4 + 1/8? 7/8",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! # $ % \\boxed{42} #### 42 Final answer: 10",
]


def build_tiny_model(path, *, seed: int = 0, vocab_size: int = 400, hidden_size: int = 32,
                     initializer_range: float = 0.3):
    """Save a tiny random Llama and a byte-level BPE tokenizer (no download) under `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=initializer_range,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_factory():
    """`build_tiny_model`, for tests that need another tiny model (other sizes or initialisation)."""
    return build_tiny_model


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from rlprompt_math.engines.transformers import TransformersEngine

    return TransformersEngine.load(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def default_engine():
    from rlprompt_math.engines.transformers import TransformersEngine

    return TransformersEngine.load(None, device="cpu", dtype="float32")


# ---- run settings --------------------------------------------------------------------------------------

# A training run that finishes in seconds on the tiny model: two questions a step, few validation and test
# questions, short completions, no progress bars. Each test adds its agent and step counts.
FAST_RUN = {"dtype": "float32", "batch_size": 2, "prompts_per_question": 2, "val_size": 3, "test_size": 4,
            "max_new_tokens": 4, "num_problems": 100, "quiet": True}

# What each differentiable route adds for a short run on a tiny model.
ROUTES = {
    "soft-prompt": {"grad_lr": 0.05},
    "pez": {"grad_lr": 0.2, "action_vocab": "full", "prompt_length": 4, "soft_init": "random"},
    "gumbel": {"gumbel_lr": 1e-3, "prompt_length": 2, "policy": "refiner"},
}


def route_run(agent: str, **settings) -> dict:
    """A four-step run of the differentiable route `agent`, validated and checkpointed every two steps."""
    return {"agent": agent, **FAST_RUN, **ROUTES[agent], "steps": 4, "eval_every": 2, "checkpoint_every": 2,
            **settings}


# --loss-target own: the loss at the model's own correct answers (see the `answerable` fixture).
OWN_TARGETS = {"loss_target": "own", "target_questions": 40, "max_new_tokens": 16}

# REINFORCE on the whole prompt space: two exemplar slots over a pool of 4, three answer forms, two words.
EXEMPLAR_RUN = {**FAST_RUN, "agent": "reinforce", "policy": "refiner", "policy_width": 8, "shots": 2,
                "exemplar_pool": 4, "answer_forms": ["bare", "equation", "completion"], "prompt_length": 2,
                "steps": 2, "checkpoint_every": 1, "eval_every": 1, "no_final_eval": True}


def as_flags(settings: dict) -> list[str]:
    """`settings` as run.py's flags: {"batch_size": 2, "quiet": True} -> ["--batch-size", "2", "--quiet"]."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


# The fast run on the command line: three steps, validated after the second and the last.
FAST_FLAGS = as_flags({**FAST_RUN, "steps": 3, "eval_every": 2})


# ---- test doubles --------------------------------------------------------------------------------------


class ToyVocab:
    """Stands in for ActionVocab: action i decodes to the word "i"."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def decode(self, actions):
        return " ".join(map(str, actions))

    def to_dict(self):
        return {"size": self.n}


class ToyEngine:
    """Stands in for the LLM engine where only its fingerprint is read (policy files record it)."""

    def fingerprint(self):
        return {"model": "toy"}


class BanditEnv:
    """Stands in for PromptRefineEnv (what agents use of it: problems, vocab, prompt_length, engine, observe,
    score) without an LLM: a multi-armed bandit whose best arm is `target`. Reward = offset + share of slots on
    the target + per_question x the question's number (questions unlike each other) + noise; without noise,
    reruns are exact."""

    def __init__(self, vocab_size=8, length=2, target=(3, 5), offset=0.0, noise=0.0, seed=0, questions=16,
                 per_question=0.0):
        self.vocab, self.prompt_length, self.engine = ToyVocab(vocab_size), length, ToyEngine()
        self.target, self.offset, self.noise, self.per_question = np.array(target), offset, noise, per_question
        self.problems = [Problem(str(i), f"q{i}", "0") for i in range(questions)]
        self.rng = np.random.default_rng(seed)

    def observe(self, problems):
        return np.ones((len(problems), 4), np.float32)

    def score(self, problems, actions, prompts=None, batch_label=""):
        if actions is None:  # validation passes prompt texts
            actions = [[int(x) for x in p.split()] for p in prompts]
        actions = np.asarray(actions)
        match = (actions == self.target).mean(1)
        rewards = (self.offset + match + self.per_question * np.array([int(p.id) for p in problems])
                   + self.noise * self.rng.standard_normal(len(match)))
        infos = [{"correct": bool(m == 1), "prompt": self.vocab.decode(a), "question": p.question,
                  "completion": "", "extracted": None, "gold": "0"} for m, a, p in zip(match, actions, problems)]
        return rewards, infos


# ---- run directories -----------------------------------------------------------------------------------

TIMINGS = ("wall_s", "step_s")  # the only columns and summary entries two equal runs may differ in


def metrics_rows(run) -> list[dict]:
    """The run directory `run`'s metrics.csv, a dict per row (values as written: strings)."""
    from rlprompt_math.checkpoint import METRICS

    with open(run / METRICS, newline="") as handle:
        return list(csv.DictReader(handle))


def timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


@pytest.fixture
def resume_matches_whole_run(tiny_engine, tmp_path, monkeypatch):
    """check(settings, crash_at, resumes_at, splits=None, forbidden=()): train `settings` (a RunConfig's flat
    settings) once whole, and once stopped by Ctrl-C in the update of step `crash_at`, then resumed as
    `--resume` does from its checkpoint of step `resumes_at`. The two runs must end alike: the same summary and
    metrics.csv (times aside) and every other file byte for byte (policies, state, samples, splits, exemplar
    pool), their config.yaml but for the name and `resume`. `forbidden`: dotted paths of work the saved run holds, which
    the resumed run must read, not redo (they fail if called). Returns (whole, resumed) `Built`s."""
    return functools.partial(_resume_matches_whole_run, tiny_engine, tmp_path, monkeypatch)


def _refused(target: str):
    def refuse(*args, **kwargs):
        pytest.fail(f"the resumed run called {target} again")

    return refuse


def _resume_matches_whole_run(engine, tmp_path, monkeypatch, settings, crash_at, resumes_at, splits=None,
                              forbidden=()):
    import yaml

    import rlprompt_math.train as training
    from rlprompt_math.checkpoint import CONFIG, METRICS, POLICY_LAST, STATE_LAST, TENSORBOARD
    from rlprompt_math.config import RunConfig

    def build(config):
        return training.build(config, engine=engine, splits=splits, log=lambda _: None)

    runs = {name: tmp_path / name for name in ("whole", "part")}
    whole = build(RunConfig.from_flat({**settings, "output_dir": str(tmp_path), "name": "whole"}))
    whole_summary = whole.agent.train(progress=False)
    part = build(RunConfig.from_flat({**settings, "output_dir": str(tmp_path), "name": "part"}))
    update = part.agent.update

    def update_until_the_crash():
        if part.agent.step == crash_at:
            raise KeyboardInterrupt  # mid-way through a step, with state saved only at the checkpoint before
        return update()

    part.agent.update = update_until_the_crash
    with pytest.raises(KeyboardInterrupt):
        part.agent.train(progress=False)
    for target in forbidden:
        monkeypatch.setattr(target, _refused(target))
    resumed = build(training.resume_config(runs["part"], quiet=True))
    assert resumed.agent.step == resumes_at
    summary = resumed.agent.train(progress=False)

    assert timeless(summary) == timeless(whole_summary)
    rows = {name: [timeless(row) for row in metrics_rows(run)] for name, run in runs.items()}
    assert rows["part"] == rows["whole"] and len(rows["whole"]) >= settings["steps"]
    files = {name: sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file()
                          and TENSORBOARD not in p.relative_to(run).parts) for name, run in runs.items()}
    assert files["part"] == files["whole"]
    assert {CONFIG, METRICS, POLICY_LAST, STATE_LAST} <= {str(p) for p in files["whole"]}
    for path in files["whole"]:
        if str(path) == CONFIG:  # aside from the run's name and the run it resumed
            whole_config, part_config = (yaml.safe_load((runs[name] / path).read_text()) for name in ("whole", "part"))
            assert {**part_config, "name": None, "resume": None} == {**whole_config, "name": None, "resume": None}
        elif str(path) != METRICS:
            assert (runs["part"] / path).read_bytes() == (runs["whole"] / path).read_bytes(), path
    return whole, resumed


@pytest.fixture(scope="session")
def answerable(tiny_engine):
    """40 training problems. The first 10 the tiny model answers with a number under the init text get
    that number as their gold answer (so its completion is correct); the rest get one it never writes."""
    import dataclasses

    import rlprompt_math.train as training
    from rlprompt_math.config import RunConfig
    from rlprompt_math.data import generate_problems

    problems = generate_problems(40, seed=0, kinds=["arithmetic"])
    config = RunConfig.from_flat({"agent": "soft-prompt", **OWN_TARGETS})
    env = training.build_env(config, tiny_engine, problems)
    _, infos = env.score(problems, None, prompts=[config.gradient.init_text] * len(problems))
    out, solved = [], {}
    for problem, info in zip(problems, infos):
        if str(info["extracted"]).isdigit() and len(solved) < 10:
            out.append(dataclasses.replace(problem, answer=info["extracted"]))
            solved[problem.id] = info["completion"]
        else:
            out.append(dataclasses.replace(problem, answer="-987654321"))
    assert len(solved) == 10
    return out, solved


@pytest.fixture
def evaluate_repeats_final_comparison():
    """check(run, limit): `run.py evaluate` on a finished run reports the same systems and numbers as
    training's final comparison."""
    return _evaluate_repeats_final_comparison


def _evaluate_repeats_final_comparison(run, limit: int) -> None:
    import json

    from click.testing import CliRunner

    from rlprompt_math.checkpoint import FINAL_EVAL
    from rlprompt_math.cli import main

    result = CliRunner().invoke(main, ["evaluate", str(run), "--limit", str(limit), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    final = json.loads((run / FINAL_EVAL / "report.json").read_text())
    later = json.loads((run / "eval-test" / "report.json").read_text())
    assert list(final["systems"]) == list(later["systems"])
    for name in final["systems"]:
        for key in ("accuracy", "mean_credit"):
            assert final["systems"][name][key] == later["systems"][name][key], (name, key)


@pytest.fixture
def server_killed_mid_run():
    """with server_killed_mid_run(run_dir, stop) as killed: the first request a served engine sends after the
    run's first checkpoint calls `stop()` (the real server process ends) before it goes out, once; `killed`
    records it. Mid-run by construction, however many requests a run's setup makes first."""
    return _server_killed_mid_run


@contextlib.contextmanager
def _server_killed_mid_run(run_dir, stop):
    from unittest import mock

    from rlprompt_math.checkpoint import STATE_LAST
    from rlprompt_math.engines.openai import OpenAIEngine

    killed, real_complete = [], OpenAIEngine._complete

    def complete(self, texts, **kwargs):
        if (run_dir / STATE_LAST).exists() and not killed:
            killed.append(True)
            stop()  # the request below meets a closed port
        return real_complete(self, texts, **kwargs)

    with mock.patch.object(OpenAIEngine, "_complete", complete):
        yield killed
