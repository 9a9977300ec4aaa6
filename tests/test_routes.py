"""The differentiable routes (issue 14): soft prompt (EmbedGrad), PEZ and straight-through Gumbel-softmax.

On tiny random Llamas: the soft prompt travels through the same text, generation and teacher-forcing
paths as a text prompt; each route lowers its own training loss on a fixed batch (and stops with a
message when the gradient is cut, the seed project's bug); the LLM's weights never change; saved
runs evaluate through `run.py evaluate`; fp16/bf16 models give finite losses. (Resume: test_agent_loop.)
"""

import itertools
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import OWN_TARGETS, ROUTES, as_flags, metrics_rows, route_run

import rlprompt_math.train as training
from rlprompt_math.checkpoint import POLICY_LAST, SUMMARY, CheckpointError, load_policy
from rlprompt_math.cli import main
from rlprompt_math.agents import AGENTS, check_config
from rlprompt_math.config import RunConfig
from rlprompt_math.data import generate_problems
from rlprompt_math.evaluation import evaluate_run
from rlprompt_math.engines.transformers import TransformersEngine

GRADIENT_AGENTS = [name for name, cls in AGENTS.items() if cls.trains_by_gradient]


@pytest.fixture(scope="module")
def smooth_engine(tmp_path_factory, tiny_model_factory):
    """A tiny Llama with smaller weights (initializer_range 0.1): its loss is close enough to linear in the
    input embeddings that a first-order step predicts a token swap (correlation ~0.9; 0.3 on `tiny_engine`),
    which PEZ and Gumbel-softmax rely on, as they do on a trained model."""
    path = tiny_model_factory(tmp_path_factory.mktemp("smooth-llama"), initializer_range=0.1)
    return TransformersEngine.load(str(path), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def batch():
    return generate_problems(30, seed=0, kinds=["arithmetic"])[:4]


def _agent(engine, problems, agent, **settings):
    config = RunConfig.from_flat({"agent": agent, "steps": 12, "batch_size": len(problems), "eval_every": 0,
                                  **ROUTES[agent], **settings})
    check_config(config)
    env = training.build_env(config, engine, problems)
    return training.make_agent(config, env, engine=engine)[0]


def _train(agent, steps):
    for _ in range(steps):
        agent.update()
        agent.step += 1


def _training_loss(agent, problems) -> float:
    """The route's own training objective on the fixed batch, computed exactly (no sampling)."""
    engine, q, a = agent.engine, [p.question for p in problems], [p.answer for p in problems]
    with torch.no_grad():
        if agent.name == "soft-prompt":
            return float(engine.prompt_loss(agent.policy.embeddings, q, a).mean())
        if agent.name == "pez":  # the loss at the projection
            return float(agent.losses(problems)[0].mean())
        # Gumbel-softmax trains E_{prompt ~ softmax(logits)}[loss] (the Gumbel-max trick): every prompt.
        logits = agent.policy.logits(agent._observe(agent.policy, problems)).masked_fill(agent.empty, float("-inf"))
        logp = torch.log_softmax(logits, -1)  # [B, T, V]
        candidates = [i for i in range(logits.shape[-1]) if not agent.empty[i]]
        prompts = torch.tensor(list(itertools.product(candidates, repeat=logits.shape[1])))  # [C, T]
        losses = engine.prompt_loss(agent.rows[prompts].repeat_interleave(len(q), 0), q * len(prompts),
                                 a * len(prompts)).view(len(prompts), len(q))
        weights = sum(logp[:, t, prompts[:, t]] for t in range(prompts.shape[1])).exp().T  # [C, B]
        return float((weights * losses).sum(0).mean())


# ---- the soft prompt is a prompt like any other ------------------------------------------------------


def test_a_soft_prompt_of_a_texts_embeddings_is_that_text(tiny_engine, batch):
    text = "Let's think step by step."
    ids = tiny_engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    marker = tiny_engine.soft_prompt_text(tiny_engine.token_embeddings()[ids])
    plain = [tiny_engine.render(text, p.question) for p in batch]
    soft = [tiny_engine.render(marker, p.question) for p in batch]
    answers = [p.answer for p in batch]
    # The embeddings take exactly the place of the prompt's tokens.
    head, tail = tiny_engine.prompt_slot_ids(batch[0].question)
    first, rows = tiny_engine._soft_spans[marker]
    assert tiny_engine.encode(plain[:1])[0] == head + ids + tail
    assert tiny_engine.encode(soft[:1])[0] == head + [-(first + j + 1) for j in range(rows)] + tail
    assert tiny_engine.generate(soft, max_new_tokens=6, use_cache=False) == \
        tiny_engine.generate(plain, max_new_tokens=6, use_cache=False)
    expected = tiny_engine.answer_logprobs(plain, answers, reduction="mean")
    assert tiny_engine.answer_logprobs(soft, answers, reduction="mean") == pytest.approx(expected, abs=1e-5)
    loss = tiny_engine.prompt_loss(tiny_engine.token_embeddings()[ids], [p.question for p in batch], answers)
    assert loss.dtype == torch.float32
    assert (-loss).tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="not a soft prompt registered"):
        tiny_engine.encode([plain[0].replace(text, "\u27e6soft-prompt 0000000000000000\u27e7")])


def test_a_registered_soft_prompt_keeps_its_values_when_the_caller_changes_them(tiny_engine, batch):
    """An agent registers its soft prompt, then its optimizer moves those very tensors in place: the marker must
    still stand for the values it was made from (in fp32 on the CPU, `.to` would have shared their storage)."""
    weights = torch.randn(3, tiny_engine.hidden_size)
    text = [tiny_engine.render(tiny_engine.soft_prompt_text(weights), p.question) for p in batch]
    before = tiny_engine.answer_logprobs(text, [p.answer for p in batch])
    with torch.no_grad():
        weights.add_(1.0)  # as an optimizer step does
    assert tiny_engine.answer_logprobs(text, [p.answer for p in batch]) == pytest.approx(before, abs=1e-6)


def test_the_soft_prompt_goes_where_the_template_puts_the_prompt(tiny_model_dir, batch):
    engine = TransformersEngine.load(str(tiny_model_dir), device="cpu", dtype="float32",
                                     template="chat:{prompt} {question}")
    rows = torch.randn(3, engine.hidden_size)
    encoded = engine.encode([engine.render(engine.soft_prompt_text(rows), batch[0].question)])[0]
    head, tail = engine.prompt_slot_ids(batch[0].question)
    assert encoded == head + [-1, -2, -3] + tail  # the first registered rows of this LLM
    assert engine.tokenizer.decode(head).endswith("user\n")  # prompt first, then the question


@pytest.mark.parametrize("length", [1, 3, 20])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_the_loss_and_its_gradient_are_finite_in_half_precision(tiny_model_dir, batch, dtype, length):
    engine = TransformersEngine.load(str(tiny_model_dir), device="cpu", dtype=dtype)
    assert engine.hidden_size == engine.model.config.hidden_size
    prompt = (torch.randn(length, engine.hidden_size) * 0.3).requires_grad_(True)
    loss = engine.prompt_loss(prompt, [p.question for p in batch], [p.answer for p in batch])
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.mean().backward()
    assert prompt.grad.dtype == torch.float32 and torch.isfinite(prompt.grad).all() and prompt.grad.abs().sum() > 0


# ---- each route learns, and only the prompt learns ------------------------------------------------


@pytest.mark.parametrize("agent_name", GRADIENT_AGENTS)
def test_each_route_lowers_its_training_loss_on_a_fixed_batch(smooth_engine, batch, agent_name):
    agent = _agent(smooth_engine, batch, agent_name)
    before = _training_loss(agent, batch)
    losses = []
    for _ in range(12):
        _train(agent, 1)
        losses.append(_training_loss(agent, batch))
    # PEZ moves between vocabulary rows, so its loss can rise again between steps: the best prompt counts.
    after = min(losses) if agent_name == "pez" else losses[-1]
    assert after < before - 0.01, (before, losses)
    assert agent.forward_passes == agent.backward_passes == 12 * len(batch)
    assert agent.describe().strip()  # the prompt a person reads (metrics.csv, the summary) is never blank


@pytest.mark.parametrize("agent_name", GRADIENT_AGENTS)
def test_a_cut_gradient_stops_the_run(tiny_engine, batch, agent_name, monkeypatch):
    agent = _agent(tiny_engine, batch, agent_name)
    real = type(tiny_engine).prompt_loss
    monkeypatch.setattr(type(tiny_engine), "prompt_loss",
                        lambda self, prompt, *args, **kw: real(self, prompt.detach(), *args, **kw))
    with pytest.raises(RuntimeError, match="no gradient reached"):
        agent.update()


@pytest.mark.parametrize("agent_name", GRADIENT_AGENTS)
def test_the_llm_is_bit_for_bit_unchanged(tiny_engine, batch, agent_name):
    before = {k: v.clone() for k, v in tiny_engine.model.state_dict().items()}
    agent = _agent(tiny_engine, batch, agent_name)
    trained = [p.detach().clone() for p in agent.parameters]
    _train(agent, 3)
    assert any(not torch.equal(a, b) for a, b in zip(trained, agent.parameters))  # the prompt did move
    for name, value in tiny_engine.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(not p.requires_grad and p.grad is None for p in tiny_engine.model.parameters())
    optimised = {id(p) for group in agent.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in tiny_engine.model.parameters()}


# ---- runs: save, load, evaluate ---------------------------------------------------------------------------


@pytest.mark.parametrize("agent_name", GRADIENT_AGENTS)
def test_a_saved_run_evaluates_like_any_policy(tiny_model_dir, tmp_path, agent_name,
                                               evaluate_repeats_final_comparison):
    settings = route_run(agent_name)
    args = [*as_flags(settings), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--name", "r"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "r"
    evaluate_repeats_final_comparison(run, limit=settings["test_size"])
    untrained, *metrics = metrics_rows(run)  # the untrained prompt's validation (step -1), then the steps
    assert untrained["step"] == "-1" and untrained["val_accuracy"] != ""
    assert len(metrics) == settings["steps"] and all(float(r["step_s"]) > 0 and float(r["loss"]) > 0 for r in metrics)
    assert [int(r["forward_passes"]) for r in metrics] == [2, 4, 6, 8] and metrics[1]["val_accuracy"] != ""
    # The columns say what they hold: no reward is scored in training, the target's likelihood is, and gumbel's tau.
    assert all(r["reward"] == "" and 0 < float(r["target_likelihood"]) <= 1 for r in metrics)
    taus = [float(r["gumbel_tau"]) for r in metrics if r["gumbel_tau"]]
    if agent_name == "gumbel":  # annealed from --gumbel-tau (1) to --gumbel-tau-end (0.1) over the steps
        assert len(taus) == settings["steps"] and taus == sorted(taus)[::-1]
        assert taus[0] == 1.0 and abs(taus[-1] - 0.1) < 1e-9
    else:
        assert taus == []
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["forward_passes"] == summary["backward_passes"] == settings["steps"] * settings["batch_size"]

    engine = TransformersEngine.load(str(tiny_model_dir), device="cpu", dtype="float32")
    policy, _, meta = load_policy(run / POLICY_LAST, engine)
    expected_kind = {"soft-prompt": "soft", "pez": "fixed", "gumbel": "refiner"}[agent_name]
    assert policy.kind == expected_kind and meta["agent"] == agent_name and meta["reading"] == summary["last_prompt"]
    if agent_name == "soft-prompt":
        assert tuple(policy.embeddings.shape) == (len(engine.tokenizer("Let's think step by step.",
                                                                    add_special_tokens=False)["input_ids"]),
                                                  engine.hidden_size)
        assert summary["last_prompt"] == policy.reading()
        with pytest.raises(CheckpointError, match="do not transfer"):
            evaluate_run(run, model=str(tiny_model_dir), engine=engine, progress=False, log=lambda _: None)
    if agent_name == "pez":  # a discrete prompt: its text, from action-vocabulary tokens
        assert policy.text == summary["last_prompt"] and len(policy.actions) == 4


# ---- --loss-target own: the loss at the model's own answer ---------------------------------------------


def test_own_targets_are_the_models_correct_completions(tiny_engine, answerable, monkeypatch):
    problems, solved = answerable
    agent = _agent(tiny_engine, problems, "soft-prompt", **OWN_TARGETS)
    agent.config.batch_size = 4
    seen = []
    real = type(tiny_engine).prompt_loss
    monkeypatch.setattr(type(tiny_engine), "prompt_loss",
                        lambda self, prompt, q, a, **kw: seen.append((q, a)) or real(self, prompt, q, a, **kw))
    for _ in range(3):
        agent.update()
    assert agent.own_targets == solved  # no other prompt writes -987654321
    # The init text on all 40, then each other reference prompt on the 30 still unsolved.
    assert agent.oracle_pairs == 40 + 3 * 30
    by_question = {p.question: solved[p.id] for p in problems if p.id in solved}
    for questions, answers in seen:
        assert len(questions) == 4 and [by_question[q] for q in questions] == list(answers)
    with pytest.raises(RuntimeError, match="no greedy completion of 3 training questions"):
        _agent(tiny_engine, [p for p in problems if p.id not in solved][:3], "soft-prompt", **OWN_TARGETS).update()


def test_gumbel_forward_is_the_hard_choice_and_pez_stays_in_the_action_vocabulary(tiny_engine, batch, monkeypatch):
    seen = []
    real = type(tiny_engine).prompt_loss
    monkeypatch.setattr(type(tiny_engine), "prompt_loss",
                        lambda self, prompt, *args, **kw: seen.append(prompt) or real(self, prompt, *args, **kw))
    gumbel = _agent(tiny_engine, batch, "gumbel", action_vocab="words")
    gumbel.update()
    assert not gumbel.empty[gumbel._last_actions].any()  # the "no token" action is never chosen
    assert torch.allclose(seen[-1], gumbel.rows[gumbel._last_actions], atol=1e-6)  # real token rows forward
    assert seen[-1].requires_grad
    pez = _agent(tiny_engine, batch, "pez", action_vocab="words")
    projected = pez.actions()
    pez.update()
    vocab = pez.env.vocab
    assert all(vocab.token_ids[a] != -1 for a in projected)  # projected onto real action-vocabulary tokens
    table = tiny_engine.token_embeddings()
    assert torch.equal(seen[-1].detach(), table[[vocab.token_ids[a] for a in projected]])  # loss at the projection


@pytest.mark.parametrize("settings, message", [
    ({"agent": "gumbel", "policy": "autoregressive"}, "unconditioned or refiner"),
    ({"agent": "soft-prompt", "grad_lr": 0.0}, "--grad-lr"),
    ({"agent": "pez", "init_text": " "}, "--init-text is empty"),
    ({"agent": "gumbel", "gumbel_tau_end": 0.0}, "--gumbel-tau and --gumbel-tau-end must be > 0"),
])
def test_settings_the_routes_refuse(settings, message):
    from rlprompt_math.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        check_config(RunConfig.from_flat(settings))
