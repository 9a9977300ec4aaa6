"""The Gymnasium environments on the tiny model."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rlprompt_math.envs  # noqa: F401  (registers the environments)
from rlprompt_math.envs import make_env, make_seq_env
from rlprompt_math.data import generate_problems

PROBLEMS = generate_problems(60, seed=0, kinds=["arithmetic"])


@pytest.fixture()
def env(tiny_engine):
    return gym.make("rlprompt_math/PromptRefine-v0", engine=tiny_engine, dataset=PROBLEMS, prompt_length=3,
                    max_new_tokens=6, split=None)


def test_registered_make_shares_the_loaded_engine(env, tiny_engine):
    assert env.unwrapped.engine is tiny_engine
    assert env.action_space == gym.spaces.MultiDiscrete([len(env.unwrapped.vocab)] * 3)
    assert env.observation_space.shape == (tiny_engine.hidden_size,)


def test_registered_default_env_passes_check_env_as_a_user_runs_it(tiny_engine):
    check_env(gym.make("rlprompt_math/PromptRefine-v0", engine=tiny_engine).unwrapped, skip_render_check=True)
    check_env(gym.make("rlprompt_math/PromptRefineSeq-v0", engine=tiny_engine).unwrapped, skip_render_check=True)


def test_check_env(tiny_engine):
    kwargs = dict(prompt_length=3, max_new_tokens=6, split=None, counters_in_info=False)
    check_env(make_env(tiny_engine, PROBLEMS, **kwargs), skip_render_check=True)
    check_env(make_seq_env(tiny_engine, PROBLEMS, **kwargs), skip_render_check=True)
    sampled = make_env(tiny_engine, PROBLEMS, temperature=1.0, **kwargs)
    check_env(sampled, skip_render_check=True)  # sampling draws on np_random: still deterministic


def test_step_info_and_termination(env):
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and "question" in info
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert terminated and not truncated
    for key in ("prompt", "problem_id", "completion", "extracted", "correct", "rewards"):
        assert key in info
    # The engine's process-wide counters: a method by default, in `info` on request.
    for key in ("oracle_calls", "oracle_rows", "cache_hits"):
        assert key in env.unwrapped.engine_stats() and key not in info
    counted = make_env(env.unwrapped.engine, PROBLEMS, prompt_length=3, max_new_tokens=6, split=None,
                       counters_in_info=True)
    counted.reset(seed=1)
    counted_info = counted.step(counted.action_space.sample())[4]
    for key in ("oracle_calls", "cache_hits"):
        assert key in counted_info
    assert list(info["rewards"]) == ["answer_likelihood"]  # the default reward
    assert reward == pytest.approx(info["rewards"]["answer_likelihood"]) and 0 < reward <= 1


def _rollout(env, seed, n=8):
    env.action_space.seed(seed)
    out = []
    obs, info = env.reset(seed=seed)
    for _ in range(n):
        action = env.action_space.sample()
        _, reward, _, _, step_info = env.step(action)
        out.append((info["problem_id"], step_info["prompt"], reward, step_info["completion"]))
        obs, info = env.reset()
    return out


def test_same_seed_same_problems_prompts_rewards(env):
    assert _rollout(env, 3) == _rollout(env, 3)
    assert _rollout(env, 3) != _rollout(env, 4)


def test_sync_vector_env_matches_batched_score(tiny_engine):
    def make():
        return gym.make("rlprompt_math/PromptRefine-v0", engine=tiny_engine, dataset=PROBLEMS, prompt_length=3,
                        max_new_tokens=6, split=None, rewards=["correct", "partial"])

    vec = gym.vector.SyncVectorEnv([make] * 4, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    vec.reset(seed=11)
    problems = [e.unwrapped._problem for e in vec.envs]
    rng = np.random.default_rng(0)
    actions = rng.integers(0, len(vec.envs[0].unwrapped.vocab), size=(4, 3))
    _, rewards, terminated, _, infos = vec.step(actions)
    assert terminated.all()
    batched, _ = vec.envs[0].unwrapped.score(problems, actions)
    np.testing.assert_allclose(rewards, batched)


def test_greedy_cache_makes_repeats_free(tiny_engine):
    env = make_env(tiny_engine, PROBLEMS, prompt_length=2, max_new_tokens=6, split=None, counters_in_info=True)
    actions = np.zeros((5, 2), dtype=np.int64)
    problems = PROBLEMS[:5]
    env.score(problems, actions)
    rows = tiny_engine.stats.generated_rows
    _, infos = env.score(problems, actions)
    assert tiny_engine.stats.generated_rows == rows
    assert infos[-1]["cache_hits"] >= 5


def test_token_observations(tiny_engine):
    """observation="tokens": the question's own token ids (no special tokens), cut at max_question_tokens and
    padded with the pad id."""
    env = make_env(tiny_engine, PROBLEMS, observation="tokens", max_question_tokens=32, split=None)
    obs, info = env.reset(seed=0)
    assert obs.shape == (32,) and obs.dtype == np.int64 and env.observation_space.contains(obs)
    ids = tiny_engine.tokenizer(info["question"], add_special_tokens=False)["input_ids"]
    assert 1 < len(ids) < 32 and obs.tolist() == ids + [tiny_engine.tokenizer.pad_token_id] * (32 - len(ids))
    short = make_env(tiny_engine, PROBLEMS, observation="tokens", max_question_tokens=2, split=None)
    assert short.observe([env.unwrapped._problem])[0].tolist() == ids[:2]


def test_action_vocab_kinds(tiny_engine, tmp_path):
    full = make_env(tiny_engine, PROBLEMS, action_vocab="full", split=None)
    words = make_env(tiny_engine, PROBLEMS, action_vocab="words", split=None)
    assert len(words.vocab) < len(full.vocab)
    listed = tmp_path / "tokens.txt"
    some = sorted(tiny_engine.tokenizer.get_vocab())[100:102]
    listed.write_text("\n".join(some) + "\n")
    tokens = make_env(tiny_engine, PROBLEMS, action_vocab=f"tokens:{listed}", split=None, empty_action=False)
    assert len(tokens.vocab) == 2
    with_empty = make_env(tiny_engine, PROBLEMS, action_vocab=f"tokens:{listed}", split=None)
    assert len(with_empty.vocab) == 3 and with_empty.vocab.decode([0, 0]) == ""


class StepLog(gym.Wrapper):
    """Records each step as the learner saw it: the observation and problem of the reset before, the action, the
    reward and the info."""

    def __init__(self, env):
        super().__init__(env)
        self.steps, self._seen = [], None

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._seen = (observation.copy(), info["problem_id"])
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.steps.append((*self._seen, np.asarray(action).copy(), reward, info))
        return observation, reward, terminated, truncated, info


def _ppo_rewards_are_the_grades_of_its_prompts(env, n_steps, timesteps):
    """SB3's PPO trains on `env` as a user runs it (no adapter). Each reward it learns from must be the grade of
    the prompt its action decodes to (`space.decode`), on the question it observed, as `score` gives it."""
    from stable_baselines3 import PPO

    logged = StepLog(env)
    model = PPO("MlpPolicy", logged, n_steps=n_steps, batch_size=n_steps // 2, n_epochs=1, seed=0, verbose=0,
                device="cpu")
    model.learn(total_timesteps=timesteps)
    base = env.unwrapped
    by_id = {p.id: p for p in base.problems}
    observations, problem_ids, actions, rewards, infos = zip(*logged.steps)
    assert len(rewards) == timesteps
    problems = [by_id[i] for i in problem_ids]
    assert [info["problem_id"] for info in infos] == list(problem_ids)  # graded on the question it observed
    np.testing.assert_array_equal(np.stack(observations), base.observe(problems))
    prompts = [base.space.decode(action) for action in actions]
    assert [info["prompt"] for info in infos] == [str(p) for p in prompts]
    graded, _ = base.score(problems, None, prompts=prompts)
    np.testing.assert_allclose(rewards, graded, rtol=1e-5)
    # PPO's last update learned from exactly these rewards (float32 in its buffer), step for step.
    np.testing.assert_array_equal(model.rollout_buffer.rewards[:, 0], np.float32(rewards[-n_steps:]))
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)
    return prompts, rewards


def test_sb3_ppo_learns_from_the_grades_of_its_prompts_without_an_adapter(tiny_engine):
    env = gym.make("rlprompt_math/PromptRefine-v0", engine=tiny_engine, dataset=PROBLEMS, prompt_length=2,
                   max_new_tokens=4, split=None)  # the default reward: the answer's likelihood, never flat
    prompts, rewards = _ppo_rewards_are_the_grades_of_its_prompts(env, n_steps=64, timesteps=256)
    assert len(set(prompts)) > 1 and len(set(rewards)) > 1  # the check above compared something


def test_sb3_ppo_trains_the_exemplar_slots_too(tiny_engine):
    """With --shots the action is still one MultiDiscrete: exemplar slots, answer form, instruction tokens."""
    env = gym.make("rlprompt_math/PromptRefine-v0", engine=tiny_engine, dataset=PROBLEMS, prompt_length=2,
                   max_new_tokens=4, split="train", rewards=["partial"], shots=2, exemplar_pool=4,
                   answer_forms=("bare", "equation"))
    assert env.action_space.nvec.tolist() == [5, 5, 2] + [len(env.unwrapped.vocab)] * 2
    prompts, _ = _ppo_rewards_are_the_grades_of_its_prompts(env, n_steps=32, timesteps=64)
    assert any(getattr(prompt, "exemplars", ()) for prompt in prompts)  # its exemplar choices reach the prompt


def test_gym_make_builds_the_env_a_training_run_trains_on(tiny_engine, tmp_path):
    """The registry and a run share one constructor: the same settings give the same problems, exemplar pool
    (drawn with the run's seed), decoding, vocabulary, rewards and action space."""
    from rlprompt_math import train as training
    from rlprompt_math.config import RunConfig
    from rlprompt_math.data import split_problems

    seed, settings = 3, dict(prompt_length=2, max_new_tokens=4, shots=2, exemplar_pool=4,
                             answer_forms=("bare", "equation"), rewards=("partial",), action_vocab="words")
    config = RunConfig.from_flat({**settings, "seed": seed, "agent": "reinforce", "output_dir": str(tmp_path),
                                  "name": "run", "quiet": True, "steps": 1})
    built = training.build(config, engine=tiny_engine, splits=split_problems(PROBLEMS, seed), log=lambda *_: None)
    built.run.close()
    run_env = built.env
    gym_env = gym.make("rlprompt_math/PromptRefine-v0", engine=tiny_engine, dataset=PROBLEMS, seed=seed,
                       split="train", **settings).unwrapped
    assert [p.id for p in gym_env.problems] == [p.id for p in run_env.problems]
    assert gym_env.space.pool.to_dict() == run_env.space.pool.to_dict()
    assert gym_env.space.to_dict() == run_env.space.to_dict()
    assert gym_env.decoding == run_env.decoding
    assert gym_env.vocab.token_ids == run_env.vocab.token_ids
    assert gym_env.reward_mix.describe() == run_env.reward_mix.describe()
    assert gym_env.action_space == run_env.action_space
    # The pool follows the run's seed, not the seed that splits the problems.
    other = make_env(tiny_engine, PROBLEMS, seed=seed + 1, split_seed=seed, **settings)
    assert [p.id for p in other.problems] == [p.id for p in run_env.problems]
    assert other.space.pool.to_dict() != run_env.space.pool.to_dict()
