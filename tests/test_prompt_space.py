"""The prompt space (exemplar slots, answer form, instruction tokens), the policies over it, the env and the wiring."""

import json

import numpy as np
import pytest
import torch
from conftest import EXEMPLAR_RUN, metrics_rows
from gymnasium.utils.env_checker import check_env

import rlprompt_math.train as training
from rlprompt_math.agents import check_config
from rlprompt_math.checkpoint import EXEMPLARS, POLICY_BEST, PROMPT, load_policy, save_policy
from rlprompt_math.config import ConfigError, RunConfig
from rlprompt_math.data import Problem, generate_problems
from rlprompt_math.exemplars import ExemplarPool
from rlprompt_math.policies import POINTER_THRESHOLD, AutoregressiveRefiner, Refiner, Unconditioned, build_policy
from rlprompt_math.prompt_space import PromptSpace
from rlprompt_math.templates import Exemplar, Prompt
from rlprompt_math.vocab import ActionVocab

POOL = [Problem("a", "What is 36+32?", "68"), Problem("b", "What is 7*8?", "56"), Problem("c", "What is 9-4?", "5")]


@pytest.fixture()
def vocab(tiny_engine):
    return ActionVocab.from_spec(tiny_engine.tokenizer, "words")


def _space(vocab, shots=2, forms=("bare", "equation")):
    return PromptSpace(vocab, 3, ExemplarPool(POOL), shots, forms)


# ---- the space ----------------------------------------------------------------------------------------


def test_slots_nvec_and_decode(vocab):
    space = _space(vocab)
    assert space.slot_sizes == [4, 4, 2, len(vocab), len(vocab), len(vocab)] and len(space) == 6
    assert space.nvec.dtype == np.int64 and space.nvec.tolist() == space.slot_sizes
    assert space.slot_kinds == ["exemplar", "exemplar", "form", "token", "token", "token"]
    words = [5, 0, 9]
    prompt = space.decode([3, 1, 1] + words)  # problems c then a (slot value 1 + pool index), the equation form
    assert prompt == Prompt(vocab.decode(words), (Exemplar("What is 9-4?", "9-4 = 5"), Exemplar("What is 36+32?", "36+32 = 68")))
    assert space.decode([2, 2, 0] + words) == Prompt(vocab.decode(words), (Exemplar("What is 7*8?", "56"),))  # shown once
    with pytest.raises(ValueError, match="6"):
        space.decode(words)


def test_the_none_exemplar_gives_fewer_shots(vocab):
    space = _space(vocab)
    none = space.none_index
    assert none == 0
    assert len(space.decode([1, 2, 0, 1, 2, 3]).exemplars) == 2
    assert len(space.decode([none, 2, 0, 1, 2, 3]).exemplars) == 1
    # No exemplar at all: the instruction text itself, as an instruction-only prompt is.
    assert space.decode([none, none, 1, 1, 2, 3]) == vocab.decode([1, 2, 3])
    # The all-zeros action (an untrained policy's greedy choice) is the empty prompt: "no prompt".
    assert space.decode([0] * len(space)) == ""


def test_no_shots_decodes_exactly_as_the_vocabulary(vocab):
    space = PromptSpace(vocab, 4)
    assert space.slot_sizes == [len(vocab)] * 4 and space.factor_sizes == [] and len(space) == 4
    rows = np.random.default_rng(0).integers(0, len(vocab), size=(200, 4))
    for row in rows:
        decoded = space.decode(row)
        assert type(decoded) is str and decoded == vocab.decode(row)
    # Random search draws the same candidates from the space as from the vocabulary (same stream).
    assert np.array_equal(space.sample(np.random.default_rng(3), 5),
                          np.random.default_rng(3).integers(0, len(vocab), size=(5, 4)))


def test_a_space_refuses_what_it_cannot_decode(vocab):
    with pytest.raises(ValueError, match="pool"):
        PromptSpace(vocab, 3, None, 2)
    with pytest.raises(ValueError, match="completions"):
        PromptSpace(vocab, 3, ExemplarPool(POOL), 2, ("bare", "completion"))  # not collected yet
    with pytest.raises(ValueError, match="distinct"):
        PromptSpace(vocab, 3, ExemplarPool(POOL), 2, ("bare", "bare"))


def test_a_space_round_trips(vocab):
    space = _space(vocab)
    again = PromptSpace.from_dict(vocab, json.loads(json.dumps(space.to_dict())))
    rows = space.sample(np.random.default_rng(0), 50)
    assert again.slot_sizes == space.slot_sizes and [again.decode(r) for r in rows] == [space.decode(r) for r in rows]


# ---- the policies over it -----------------------------------------------------------------------------


def test_masked_logits_never_sample_an_index_past_a_slot(tiny_engine, vocab):
    space = _space(vocab)
    obs = tiny_engine.features([tiny_engine.render("", q) for q in ("What is 2+3?", "What is 7*8?")])
    for kind in ("unconditioned", "refiner"):
        policy = build_policy(kind, engine=tiny_engine, space=space, width=8)
        assert policy.slot_sizes == space.slot_sizes
        with torch.no_grad():
            for parameter in policy.parameters():
                parameter.add_(torch.randn_like(parameter) * 3)
            if kind == "unconditioned":
                policy.slot_logits[:3, len(POOL) + 1:] = 1e4  # past the slots' sizes: must stay unsampled
        logits = policy.logits(obs)
        assert logits.shape == (2, 6, len(vocab))
        assert torch.isinf(logits[:, :2, len(POOL) + 1:]).all() and torch.isinf(logits[:, 2, 2:]).all()
        for temperature, top_k in ((1.0, None), (3.0, None), (1.0, 5)):
            actions = policy.sample(obs.repeat(500, 1), temperature=temperature, top_k=top_k,
                                    generator=torch.Generator().manual_seed(0))
            assert (actions < torch.tensor(space.slot_sizes)).all() and (actions >= 0).all()
        assert (policy.greedy(obs) < torch.tensor(space.slot_sizes)).all()
        log_prob, entropy = policy.log_prob(obs, policy.sample(obs))
        assert torch.isfinite(log_prob).all() and torch.isfinite(entropy).all()
        log_prob.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_log_prob_and_entropy_by_hand():
    policy = Unconditioned(1, 3, factor_sizes=[2])  # one 2-way factor, one 3-way token slot
    with torch.no_grad():
        policy.slot_logits.copy_(torch.tensor([[0.5, -1.0, 7.0], [0.0, 1.0, 2.0]]))  # 7.0: not an index of slot 0
    actions = torch.tensor([[1, 2]])
    log_prob, entropy = policy.log_prob(torch.zeros(1, 1), actions)
    p0 = torch.softmax(torch.tensor([0.5, -1.0]), 0)
    p1 = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert log_prob.item() == pytest.approx(float(p0[1].log() + p1[2].log()), abs=1e-6)
    expected_entropy = -(p0 * p0.log()).sum() - (p1 * p1.log()).sum()
    assert entropy.item() == pytest.approx(float(expected_entropy), abs=1e-6)
    # At the start every slot is uniform over its own size.
    fresh = Unconditioned(1, 3, factor_sizes=[2])
    assert fresh.log_prob(torch.zeros(1, 1), actions)[1].item() == pytest.approx(np.log(2) + np.log(3), abs=1e-6)


def test_the_refiners_exemplar_head_depends_on_the_question(tiny_engine, vocab):
    space = _space(vocab)
    policy = build_policy("refiner", engine=tiny_engine, space=space, width=16)
    assert isinstance(policy, Refiner) and [h.out_features for h in policy.factor_heads] == [4, 4, 2]
    obs = tiny_engine.features([tiny_engine.render("", q) for q in ("What is 2+3?", "Solve for x: 3x = 12.")])
    start = policy.logits(obs)[:, :3]
    assert torch.equal(start[0], start[1])  # uniform at the start, as the instruction slots
    # One REINFORCE-shaped step on the exemplar slots' choice: the heads learn, and then differ by question.
    log_prob, _ = policy.log_prob(obs, torch.tensor([[0, 1, 1, 0, 0, 0], [2, 2, 0, 0, 0, 0]]))
    log_prob.sum().backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in policy.factor_heads)
    with torch.no_grad():
        for head in policy.factor_heads:
            head.weight.add_(head.weight.grad)
    after = policy.logits(obs)[:, :3]
    assert not torch.allclose(after[0], after[1])
    assert torch.isinf(after[:, :2, 4:]).all()


def test_the_autoregressive_policy_and_the_gradient_routes_refuse_exemplars(tiny_engine, vocab):
    with pytest.raises(ValueError, match="unconditioned or refiner"):
        build_policy("autoregressive", engine=tiny_engine, space=_space(vocab))
    assert isinstance(build_policy("autoregressive", engine=tiny_engine, space=PromptSpace(vocab, 2)),
                      AutoregressiveRefiner)
    with pytest.raises(ConfigError, match="unconditioned or refiner"):
        check_config(RunConfig.from_flat({"shots": 2, "policy": "autoregressive"}))
    for agent in ("soft-prompt", "pez", "gumbel"):
        with pytest.raises(ConfigError, match="--shots 0"):
            check_config(RunConfig.from_flat({"agent": agent, "shots": 1, "policy": "refiner"}))
    with pytest.raises(ConfigError, match="answer-form"):
        check_config(RunConfig.from_flat({"shots": 1, "answer_forms": ["words"]}))
    check_config(RunConfig.from_flat({"agent": "random", "shots": 2, "policy": "autoregressive"}))  # no policy to train


def test_policy_files_keep_the_space_and_structured_fixed_prompts(tiny_engine, vocab, tmp_path):
    from rlprompt_math.policies import FixedPrompt

    space = _space(vocab)
    policy = build_policy("refiner", engine=tiny_engine, space=space, width=8)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter))
    save_policy(tmp_path / "p.safetensors", policy, space, tiny_engine)
    loaded, loaded_space, meta = load_policy(tmp_path / "p.safetensors", tiny_engine)
    obs = tiny_engine.features([tiny_engine.render("", q) for q in ("What is 2+3?", "What is 7*8?")])
    assert loaded_space.slot_sizes == space.slot_sizes and meta["policy"]["factor_sizes"] == [4, 4, 2]
    assert loaded.prompts(obs, loaded_space) == policy.prompts(obs, space)

    prompt = Prompt("Be exact.", (Exemplar("What is 7*8?", "7*8 = 56"),))
    fixed = FixedPrompt(prompt, 3, len(vocab), actions=[1, 3, 1, 0, 0, 0])
    assert fixed.text == str(prompt) and fixed.prompts(obs) == [prompt, prompt]
    save_policy(tmp_path / "f.safetensors", fixed, space, tiny_engine)
    loaded_fixed, _, meta = load_policy(tmp_path / "f.safetensors", tiny_engine)
    assert loaded_fixed.prompt == prompt and meta["policy"]["prompt"] == prompt.to_dict()
    # A Prompt without exemplars is plain text, and saved as before.
    assert FixedPrompt(Prompt("Be exact.")).prompt == "Be exact." and "prompt" not in FixedPrompt("x").config()


# ---- the environment ----------------------------------------------------------------------------------


def test_env_with_exemplar_slots_passes_check_env(tiny_engine):
    from rlprompt_math.envs import make_env

    problems = generate_problems(60, seed=0, kinds=["arithmetic"])
    env = make_env(tiny_engine, problems, prompt_length=2, max_new_tokens=4, split="train", shots=2, exemplar_pool=5,
                   answer_forms=("bare", "equation", "completion"))
    assert env.space.slot_sizes == [6, 6, 3, len(env.vocab), len(env.vocab)]
    assert env.action_space.nvec.tolist() == env.space.slot_sizes
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.array([1, 2, 1, 0, 0]))  # pool problems 0 and 1
    assert terminated and info["prompt"].startswith("[2-shot: ")
    pool_ids = {p.id for p in env.space.pool.problems}
    assert pool_ids <= {p.id for p in env.problems}  # the training split
    # Batched scoring is the same path: one Prompt per action row.
    prompts = env.prompt_texts(np.array([[1, 2, 1, 0, 0], [0, 0, 0, 0, 0]]))  # 0: no exemplar
    assert isinstance(prompts[0], Prompt) and len(prompts[0].exemplars) == 2 and prompts[1] == ""


# ---- the wiring ---------------------------------------------------------------------------------------

def test_no_validation_or_test_problem_can_appear_in_a_prompt(tiny_model_dir, tiny_engine, tmp_path):
    config = RunConfig.from_flat({**EXEMPLAR_RUN, "exemplar_pool": 10_000, "model": str(tiny_model_dir),
                                  "output_dir": str(tmp_path), "name": "leak"})
    built = training.build(config, engine=tiny_engine, log=lambda _: None)
    space, splits = built.env.space, built.splits
    assert len(space.pool) == len(splits["train"])  # the whole training split, and nothing else
    train_ids = {p.id for p in splits["train"]}
    held_out = splits["validation"] + splits["test"]
    held_ids, held_questions = {p.id for p in held_out}, {p.question for p in held_out}
    train_questions = {p.question for p in splits["train"]}
    for index in range(space.slot_sizes[0]):  # every index an exemplar slot can take, "none" included
        for form in range(len(space.forms)):
            prompt = space.decode([index, space.none_index, form, 0, 0])
            for exemplar in getattr(prompt, "exemplars", ()):
                assert exemplar.question in train_questions and exemplar.question not in held_questions
    assert {p.id for p in space.pool.problems} <= train_ids and not {p.id for p in space.pool.problems} & held_ids


def test_a_run_with_exemplars_writes_its_prompt_and_pool(tiny_model_dir, tiny_engine, tmp_path):
    settings = {**EXEMPLAR_RUN, "model": str(tiny_model_dir), "output_dir": str(tmp_path)}
    whole = training.train(RunConfig.from_flat({**settings, "name": "whole"}), engine=tiny_engine, log=lambda _: None)
    run = tmp_path / "whole"
    pool = ExemplarPool.from_dict(json.loads((run / EXEMPLARS).read_text()))
    assert len(pool) == 4 and pool.has_completions
    # The pool's completions are counted: 2 steps x 2 questions x 2 prompts, 3 validations x 3 (the untrained
    # policy's and 2 during training), 4 pool questions.
    assert whole.summary["oracle_pairs"] == 2 * 2 * 2 + 3 * 3 + 4
    kept = json.loads((run / PROMPT).read_text())
    assert set(kept) >= {"instruction", "exemplars", "messages_for_a_question", "for_question"}
    messages = kept["messages_for_a_question"]
    assert len(messages) == 2 * len(kept["exemplars"]) + 1 and messages[-1]["role"] == "user"
    assert "<question>" in messages[-1]["content"]
    pool_questions = {p.question for p in pool.problems}
    assert all(e["question"] in pool_questions for e in kept["exemplars"])

    assert [r["step"] for r in metrics_rows(run)] == ["-1", "0", "1"]  # the untrained validation first
    assert load_policy(run / POLICY_BEST, tiny_engine)[1].slot_sizes == [5, 5, 3] + [len(whole.built.env.vocab)] * 2


# ---- the Refiner's pointer head: exemplars by similarity, without replacement --------------------------


def test_the_pointer_refiner_starts_at_nearest_neighbour_retrieval(tiny_engine, vocab):
    space = _space(vocab)
    policy = build_policy("refiner", engine=tiny_engine, space=space, width=16, pointer=True, pointer_scale=10.0)
    assert policy.config()["pointer_shots"] == 2
    questions = ["What is 36+32?", "What is 9-4?"]  # each is a pool problem: its own nearest neighbour
    obs = tiny_engine.question_features(questions)
    similarity = policy.similarity(obs)
    assert similarity.shape == (2, len(POOL))
    greedy = policy.greedy(obs)
    for row, sim in zip(greedy.tolist(), similarity):
        ranked = sim.argsort(descending=True).tolist()
        # The nearest, then the second nearest (not the nearest twice) where it is more similar than "none"
        # (level with a cosine of POINTER_THRESHOLD at the start): slot value = 1 + pool index.
        assert row[:2] == [ranked[0] + 1, ranked[1] + 1 if sim[ranked[1]] > POINTER_THRESHOLD else 0]
    assert greedy[0, 0] == 1 and greedy[1, 0] == 3
    # A question unlike every pool problem (orthogonal to each, centred): no exemplars, not the least unlike ones.
    keys = policy.keys
    away = torch.randn(keys.shape[1], generator=torch.Generator().manual_seed(0))
    away -= keys.T @ torch.linalg.lstsq(keys.T, away).solution
    unlike = policy.similarity((policy.key_center + away)[None])
    assert unlike.abs().max() < 1e-4 and policy.greedy((policy.key_center + away)[None])[0, :2].tolist() == [0, 0]
    # Without the pointer the same untrained refiner writes the empty prompt for every question.
    plain = build_policy("refiner", engine=tiny_engine, space=space, width=16)
    assert plain.greedy(obs)[:, :2].eq(0).all() and "pointer_shots" not in plain.config()


def test_pointer_exemplar_slots_sample_and_score_without_replacement(tiny_engine, vocab):
    space = _space(vocab)
    policy = build_policy("refiner", engine=tiny_engine, space=space, width=16, pointer=True, pointer_scale=0.0)
    obs = tiny_engine.question_features(["What is 2+3?"]).expand(400, -1)
    actions = policy.sample(obs, generator=torch.Generator().manual_seed(0))
    picked = actions[:, :2]
    repeats = (picked[:, 0] == picked[:, 1]) & (picked[:, 0] != 0)
    assert not repeats.any()  # a problem is never drawn twice; "none" twice is allowed
    assert ((picked[:, 0] == 0) & (picked[:, 1] == 0)).any()
    # log-probabilities follow the same rule: slot 2 is uniform over the 3 values slot 1 left (pointer scale 0).
    log_prob, _ = policy.log_prob(obs[:1], torch.tensor([[1, 2, 0, 0, 0, 0]]))
    expected = -np.log(4) - np.log(3) - np.log(2) - 3 * np.log(len(vocab))
    assert log_prob.item() == pytest.approx(expected, abs=1e-5)
    none_twice, _ = policy.log_prob(obs[:1], torch.tensor([[0, 0, 0, 0, 0, 0]]))
    assert none_twice.item() == pytest.approx(-2 * np.log(4) - np.log(2) - 3 * np.log(len(vocab)), abs=1e-5)


def test_pointer_refiner_files_load_with_their_pointer(tiny_engine, vocab, tmp_path):
    space = _space(vocab)
    policy = build_policy("refiner", engine=tiny_engine, space=space, width=8, pointer=True, pointer_scale=3.0)
    with torch.no_grad():
        policy.pointer_scale.add_(1.5)
    save_policy(tmp_path / "p.safetensors", policy, space, tiny_engine)
    loaded, loaded_space, _ = load_policy(tmp_path / "p.safetensors", tiny_engine)
    assert loaded.shots == 2 and loaded.pointer_scale.tolist() == [4.5, 4.5]
    obs = tiny_engine.question_features(["What is 2+3?", "What is 7*8?", "Solve for x: 2x = 4."])
    assert torch.equal(loaded.greedy(obs), policy.greedy(obs))


def test_runs_from_before_the_pointer_resume_without_it_and_old_optimizer_states_are_refused_clearly(tiny_engine, vocab):
    from rlprompt_math.checkpoint import CheckpointError, optimizer_tensors, restore_optimizer
    from rlprompt_math.config import saved_config

    assert saved_config({"policy": "refiner", "shots": 2}).policy.exemplar_pointer is False  # its config.yaml lacks it
    assert RunConfig().policy.exemplar_pointer is True
    policy = build_policy("refiner", engine=tiny_engine, space=_space(vocab), width=8, pointer=True)
    old = torch.optim.Adam(policy.parameters(), lr=0.01)  # one group: how refiner states were saved before
    tensors, meta = optimizer_tensors(old)
    new = torch.optim.Adam(policy.parameter_groups(1.0, 0.01))
    with pytest.raises(CheckpointError, match="older version"):
        restore_optimizer(new, tensors, meta)


def test_an_empty_batch_of_questions_gets_no_prompts(tiny_engine, vocab):
    policy = build_policy("refiner", engine=tiny_engine, space=_space(vocab), width=8, pointer=True)
    assert policy.greedy(torch.zeros(0, tiny_engine.hidden_size)).shape == (0, len(_space(vocab)))
