"""REINFORCE and its baselines on toy bandits; policies and checkpoints on the tiny model (resume: test_agent_loop)."""

import numpy as np
import pytest
import torch
from conftest import BanditEnv

from rlprompt_math.agents import AlgorithmConfig, ReinforceAgent
from rlprompt_math.agents.base import NonFiniteError
from rlprompt_math.agents.reinforce import BASELINES, BaselineState, advantages
from rlprompt_math.checkpoint import (POLICY_BEST, POLICY_FORMAT, CheckpointError, atomic_save,
                                      load_policy, read, save_policy)
from rlprompt_math.data import generate_problems
from rlprompt_math.policies import POLICY_KINDS, Unconditioned, build_policy
from rlprompt_math.runlog import RunDir


def test_reinforce_finds_the_best_arm():
    env = BanditEnv()
    policy = Unconditioned(2, 8)
    agent = ReinforceAgent(env, policy, AlgorithmConfig(steps=150, lr=0.1, batch_size=4, entropy_coef=0.0))
    agent.train(progress=False)
    assert policy.greedy(torch.zeros(1, 4)).tolist() == [[3, 5]]
    assert agent.history[-1]["reward"] > 0.8 > agent.history[0]["reward"]


def test_finalists_keep_a_measured_prompt_over_an_unsampled_greedy_one():
    env = BanditEnv(vocab_size=4, target=(1, 2))
    policy = Unconditioned(2, 4)
    config = AlgorithmConfig(steps=4, lr=0.0, batch_size=4, prompts_per_question=8, entropy_coef=0.0, finalists=3)
    agent = ReinforceAgent(env, policy, config, val_problems=env.problems[:4])
    summary = agent.train(progress=False)
    # Untrained (lr 0), the greedy prompt is not the target; the target was sampled and scored best.
    assert policy.greedy(torch.zeros(1, 4)).tolist() != [[1, 2]]
    assert (1, 2) in agent.prompt_rewards
    chosen = summary["finalists"]["chosen"]
    assert chosen["actions"] == [1, 2] and chosen["val_accuracy"] == 1.0 and chosen["kept"]
    assert summary["best_val_accuracy"] == 1.0
    assert len(summary["finalists"]["finalists"]) == 3
    no_finalists = ReinforceAgent(env, Unconditioned(2, 4), AlgorithmConfig(steps=2, batch_size=4, finalists=0),
                                  val_problems=env.problems[:4]).train(progress=False)
    assert "finalists" not in no_finalists


def test_update_epochs_learn_more_from_the_same_pairs_and_clip_the_ratio():
    """--update-epochs reuses a step's rewards: after one step on the same samples, 4 epochs put more probability on
    the best sampled prompt than 1 (the same oracle pairs); the further epochs' surrogate is PPO's, so a prompt whose
    ratio is already past 1 + clip_ratio gets no more push from its advantage (at lr 0 nothing moves at all)."""
    def one_step(epochs, lr=0.3):
        env = BanditEnv(vocab_size=6, target=(3, 5), questions=32)
        policy = Unconditioned(2, 6)
        agent = ReinforceAgent(env, policy, AlgorithmConfig(steps=1, lr=lr, batch_size=4, prompts_per_question=8,
                                                            entropy_coef=0.0, update_epochs=epochs, seed=3))
        agent.train(progress=False)
        best = max(agent.prompt_rewards, key=lambda a: np.mean(agent.prompt_rewards[a]))
        log_prob, _ = policy.log_prob(torch.zeros(1, 4), torch.tensor([best]))
        return agent, float(log_prob.detach()), policy.slot_logits.detach().clone()

    once, more = one_step(1), one_step(4)
    assert once[0].oracle_pairs == more[0].oracle_pairs == 4 * 8
    assert more[1] > once[1] + 0.2  # 0.34 nats more
    frozen = one_step(4, lr=0.0)
    assert torch.equal(frozen[2], torch.zeros_like(frozen[2]))
    # the clipped surrogate: a sample whose ratio is past 1 + clip_ratio (positive advantage) pushes no more
    agent = once[0]
    actions = torch.tensor([list(a) for a in agent.prompt_rewards])
    obs, adv = torch.zeros(len(actions), 4), torch.ones(len(actions))
    agent.optimizer = torch.optim.SGD(agent.policy.parameters(), lr=0.0)  # gradients only, nothing moves
    with torch.no_grad():
        now, _ = agent.policy.log_prob(obs, actions)
    pushes = {}
    for name, sampled in {"ratio 1": now, "ratio e": now - 1.0}.items():
        agent.reuse_rewards(obs, actions, sampled, adv, 0.0, "test")
        pushes[name] = float(agent.policy.slot_logits.grad.abs().sum())
    assert pushes["ratio 1"] > 0 and pushes["ratio e"] == 0


def _gradient_samples(baseline, n=200):
    """Per-update policy gradients at a fixed policy, on a bandit whose rewards carry a large offset."""
    env = BanditEnv(offset=5.0, noise=0.1)
    torch.manual_seed(0)
    policy = Unconditioned(2, 8)
    config = AlgorithmConfig(baseline=baseline, batch_size=4, prompts_per_question=4)
    agent = ReinforceAgent(env, policy, config)
    grads = []
    for _ in range(n):
        obs = torch.ones(16, 4)
        actions = policy.sample(obs, generator=agent.generator)
        rewards, _ = env.score(env.problems, actions.numpy())
        rewards = torch.as_tensor(rewards, dtype=torch.float32).view(4, 4)
        values = None
        if baseline == "learned":
            values = agent.value_head(obs)
            loss = ((values - rewards.view(-1)) ** 2).mean()
            agent.value_optimizer.zero_grad()
            loss.backward()
            agent.value_optimizer.step()
        adv = advantages(rewards, config, agent.baseline_state, values).view(-1)
        log_prob, _ = policy.log_prob(obs, actions)
        grad, = torch.autograd.grad(-(adv.detach() * log_prob).mean(), policy.slot_logits)
        grads.append(grad.flatten())
    return torch.stack(grads[n // 4:])  # skip the warm-up of moving-average and learned baselines


def test_each_baseline_lowers_gradient_variance():
    variance = {b: _gradient_samples(b).var(0).sum().item() for b in BASELINES}
    for baseline in BASELINES:
        if baseline != "none":
            assert variance[baseline] < 0.5 * variance["none"], variance


def test_advantages_rloo_and_normalisation():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 5.0]])
    adv = advantages(rewards, AlgorithmConfig(baseline="rloo"), BaselineState())
    assert torch.allclose(adv[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    assert torch.allclose(adv[1], torch.tensor([-1.0, -1.0, -1.0, 3.0]))
    normed = advantages(rewards, AlgorithmConfig(baseline="none", normalize_rewards=True), BaselineState())
    assert torch.allclose(normed.mean(1), torch.zeros(2), atol=1e-6)


def test_entropy_bonus_keeps_entropy_higher():
    final = {}
    for coef in (0.0, 0.5):
        torch.manual_seed(0)
        policy = Unconditioned(2, 8)
        config = AlgorithmConfig(steps=60, lr=0.1, entropy_coef=coef, entropy_schedule="constant")
        agent = ReinforceAgent(BanditEnv(), policy, config)
        agent.train(progress=False)
        final[coef] = agent.history[-1]["entropy"]
    assert final[0.5] > final[0.0] + 0.2, final


def test_non_finite_stops_with_a_clear_message():
    class NaNEnv(BanditEnv):
        def score(self, problems, actions, prompts=None, batch_label=""):
            rewards, infos = super().score(problems, actions)
            rewards[0] = np.nan
            return rewards, infos

    agent = ReinforceAgent(NaNEnv(), Unconditioned(2, 8), AlgorithmConfig(steps=2))
    with pytest.raises(NonFiniteError, match="non-finite reward at step 0"):
        agent.train(progress=False)
    # A diverged learned baseline: sampling is unaffected, so only the agent's own check can stop the step
    # (unchecked, the NaN loss would step the policy to NaN and torch would fail later, elsewhere).
    agent = ReinforceAgent(BanditEnv(), Unconditioned(2, 8), AlgorithmConfig(steps=2, baseline="learned"))
    with torch.no_grad():
        agent.value_head.net[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"^non-finite loss at step 0 "):
        agent.train(progress=False)


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_policies_start_uniform_and_round_trip(kind, tiny_engine, tmp_path):
    from rlprompt_math.vocab import ActionVocab

    vocab = ActionVocab.from_spec(tiny_engine.tokenizer, "words")
    policy = build_policy(kind, engine=tiny_engine, vocab=vocab, prompt_length=3, width=16)
    obs = tiny_engine.features([tiny_engine.render("", q) for q in ("What is 2+3?", "What is 7*8?")])
    actions = policy.sample(obs, generator=torch.Generator().manual_seed(0))
    log_prob, entropy = policy.log_prob(obs, actions)
    assert torch.allclose(entropy, torch.full((2,), 3 * np.log(len(vocab))), atol=1e-4)  # uniform at start
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    path = tmp_path / "p.safetensors"
    save_policy(path, policy, vocab, tiny_engine)
    loaded, loaded_space, meta = load_policy(path, tiny_engine)
    assert torch.equal(loaded.greedy(obs), policy.greedy(obs))
    assert loaded_space.vocab.token_ids == vocab.token_ids and meta["policy"]["kind"] == kind
    assert loaded_space.slot_sizes == [len(vocab)] * 3 and "factor_sizes" not in meta["policy"]
    # Greedy is slot-by-slot argmax through the scoring path: each slot given the slots before it (the same
    # logits at every slot for factorised policies, the GRU fed its own choices for the autoregressive one).
    greedy = policy.greedy(obs)
    decoded = torch.zeros_like(greedy)
    with torch.no_grad():
        for t in range(policy.prompt_length):
            decoded[:, t] = policy.logits(obs, decoded)[:, t].argmax(-1)
    assert torch.equal(decoded, greedy)
    small = policy.sample(obs, temperature=0.01, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(small, greedy)


def test_checkpoint_refuses_other_model_and_bad_files(tiny_engine, tiny_model_factory, tmp_path):
    from rlprompt_math.engines.transformers import TransformersEngine
    from rlprompt_math.vocab import ActionVocab

    vocab = ActionVocab.from_spec(tiny_engine.tokenizer, "words")
    path = tmp_path / "p.safetensors"
    save_policy(path, build_policy("refiner", engine=tiny_engine, vocab=vocab, prompt_length=2, width=8), vocab,
                tiny_engine)
    other = TransformersEngine.load(str(tiny_model_factory(tmp_path / "other", vocab_size=300, hidden_size=48)),
                                    device="cpu", dtype="float32")
    with pytest.raises(CheckpointError, match="was trained for model"):
        load_policy(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_policy(tmp_path / "junk.safetensors", tiny_engine)


@pytest.mark.parametrize("kind", ["refiner", "autoregressive", "soft"])
def test_a_policy_file_from_before_the_renames_loads(kind, tiny_engine, tmp_path):
    """Older policy files call the refiners' width and the soft prompt's embedding size "hidden_size"."""
    from rlprompt_math.vocab import ActionVocab

    vocab = ActionVocab.from_spec(tiny_engine.tokenizer, "words")
    policy = build_policy(kind, engine=tiny_engine, vocab=vocab, prompt_length=2, width=8)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    save_policy(tmp_path / "today.safetensors", policy, vocab, tiny_engine)
    tensors, metadata = read(tmp_path / "today.safetensors", POLICY_FORMAT)
    name = "embedding_dim" if kind == "soft" else "width"
    metadata["policy"]["hidden_size"] = metadata["policy"].pop(name)  # as an older version wrote it
    atomic_save(tmp_path / "older.safetensors", tensors, metadata)

    loaded, _, meta = load_policy(tmp_path / "older.safetensors", tiny_engine)
    assert meta["policy"][name] == (tiny_engine.hidden_size if kind == "soft" else 8)
    assert "hidden_size" not in meta["policy"]
    obs = tiny_engine.features([tiny_engine.render("", q) for q in ("What is 2+3?", "What is 7*8?")])
    assert loaded.prompts(obs, vocab) == policy.prompts(obs, vocab)
    for (key, value), (loaded_key, loaded_value) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert key == loaded_key and torch.equal(value, loaded_value), key


@pytest.mark.parametrize("kind", ["unconditioned", "refiner", "autoregressive"])
def test_a_logit_table_steps_at_lr_and_a_network_at_network_lr(tiny_engine, kind):
    """--lr 1 suits a table of logits (the refiner's per-choice biases are one); on a network's weights it
    saturates the policy within a few steps."""
    from rlprompt_math.envs import make_env

    env = make_env(tiny_engine, generate_problems(8, seed=0, kinds=["arithmetic"]), split=None, prompt_length=2,
                   max_new_tokens=4, rewards=["partial"])
    policy = build_policy(kind, engine=tiny_engine, vocab=env.vocab, prompt_length=2, width=8)
    agent = ReinforceAgent(env, policy, AlgorithmConfig(lr=0.5, network_lr=0.02), engine=tiny_engine)
    groups = {group["lr"]: {id(p) for p in group["params"]} for group in agent.optimizer.param_groups}
    assert set().union(*groups.values()) == {id(p) for p in policy.parameters()}
    if kind == "unconditioned":
        assert groups == {0.5: {id(policy.slot_logits)}}
    else:  # the refiner's per-choice biases are its table; the autoregressive policy has none
        assert groups.get(0.5, set()) == ({id(policy.slot_bias)} if kind == "refiner" else set())
        assert id(policy.norm.weight) in groups[0.02]


def test_atomic_save_keeps_previous_checkpoint(tiny_engine, tmp_path, monkeypatch):
    import rlprompt_math.checkpoint as ckpt
    from rlprompt_math.vocab import ActionVocab

    vocab = ActionVocab.from_spec(tiny_engine.tokenizer, "words")
    policy = build_policy("unconditioned", engine=tiny_engine, vocab=vocab, prompt_length=2)
    path = tmp_path / "p.safetensors"
    save_policy(path, policy, vocab, tiny_engine)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with torch.no_grad():
        policy.slot_logits.add_(1.0)
    with pytest.raises(OSError):
        save_policy(path, policy, vocab, tiny_engine)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left behind


def test_the_learning_curve_starts_from_the_untrained_policy_which_writes_no_prompt(tiny_engine):
    """Before the first update the greedy prompt is validated once: with exemplar slots it is the empty prompt
    (every slot's value 0 adds nothing), so a curve starts from "no prompt"; a resumed run does not redo it."""
    from rlprompt_math.envs import make_env

    problems = generate_problems(40, seed=0, kinds=["arithmetic"])
    env = make_env(tiny_engine, problems[:30], split=None, prompt_length=2, max_new_tokens=4, rewards=["partial"],
                   shots=2, exemplar_pool=4, answer_forms=("bare", "spaced"))
    policy = build_policy("unconditioned", engine=tiny_engine, space=env.space)
    config = AlgorithmConfig(steps=2, batch_size=2, prompts_per_question=2, eval_every=1)
    agent = ReinforceAgent(env, policy, config, engine=tiny_engine, val_problems=problems[30:])
    scored = []
    score = env.score
    env.score = lambda problems, actions, prompts=None, **kw: (scored.append(prompts),
                                                               score(problems, actions, prompts=prompts, **kw))[1]
    summary = agent.train(progress=False)
    assert scored[0] == [""] * 10  # the untrained validation: the empty prompt for every validation question
    assert 0 <= summary["untrained_val_accuracy"] <= 1 and summary["oracle_pairs"] == 3 * 10 + 2 * 2 * 2
    assert [h["step"] for h in agent.history] == [0, 1]  # steps only: callbacks and resumes see no extra row
    agent.config.steps, calls = 3, len(scored)
    agent.train(progress=False)  # continuing a run: no second untrained validation
    assert len(scored) == calls + 2


@pytest.mark.parametrize("steps,eval_every", [(2, 1), (16, 5), (30, 10), (7, 0), (5, 9)])
def test_validations_planned_counts_what_a_run_validates(tiny_engine, steps, eval_every):
    """Equal-budget benches give random search as many finalists as REINFORCE validates: the count must be exact."""
    from rlprompt_math.config import RunConfig
    from rlprompt_math.envs import make_env

    problems = generate_problems(12, seed=0, kinds=["arithmetic"])
    env = make_env(tiny_engine, problems[:8], split=None, prompt_length=1, max_new_tokens=2, rewards=["partial"])
    policy = build_policy("unconditioned", engine=tiny_engine, vocab=env.vocab, prompt_length=1)
    config = AlgorithmConfig(steps=steps, batch_size=1, prompts_per_question=2, eval_every=eval_every)
    agent = ReinforceAgent(env, policy, config, engine=tiny_engine, val_problems=problems[8:])
    calls = []
    validate = agent.validate
    agent.validate = lambda: (calls.append(agent.step), validate())[1]
    agent.train(progress=False)
    config = RunConfig.from_flat({"steps": steps, "eval_every": eval_every})
    assert len(calls) == ReinforceAgent.validations_planned(config)


def test_the_untrained_prompt_is_never_kept_even_when_it_validates_best(tiny_engine, tmp_path):
    """The kept prompt is a trained policy's own greedy prompt: the untrained validation is a reference point."""
    from rlprompt_math.envs import make_env

    problems = generate_problems(20, seed=0, kinds=["arithmetic"])
    env = make_env(tiny_engine, problems[:12], split=None, prompt_length=2, max_new_tokens=4, rewards=["partial"])
    policy = build_policy("unconditioned", engine=tiny_engine, vocab=env.vocab, prompt_length=2)
    agent = ReinforceAgent(env, policy, AlgorithmConfig(steps=2, batch_size=2, prompts_per_question=2, eval_every=1),
                           run=RunDir(tmp_path / "r"), engine=tiny_engine, val_problems=problems[12:])
    accuracies = iter([1.0, 0.0, 0.25])  # the untrained prompt validates best
    agent.validate = lambda: next(accuracies)
    summary = agent.train(progress=False)
    assert summary["untrained_val_accuracy"] == 1.0 and summary["best_val_accuracy"] == 0.25
    assert read(tmp_path / "r" / POLICY_BEST, POLICY_FORMAT)[1]["step"] == 1  # the trained prompt of step 1
