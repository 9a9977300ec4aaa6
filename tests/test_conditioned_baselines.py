"""The conditioned baselines that need no RL (issue 33): nearest-neighbour exemplar retrieval (`--agent knn`) and
cluster-then-search (`--agent cluster`), on random search's loop and oracle budget, on the tiny model."""

import pytest
import torch
from conftest import FAST_RUN

import rlprompt_math.train as training
from rlprompt_math.agents import check_config
from rlprompt_math.agents.cluster_search import kmeans
from rlprompt_math.checkpoint import POLICY_BEST, load_policy
from rlprompt_math.config import ConfigError, RunConfig, prompt_label
from rlprompt_math.data import generate_problems
from rlprompt_math.evaluation import run_prompts
from rlprompt_math.policies import ClusterPrompts, NearestExemplars, policy_prompts
from rlprompt_math.prompt_space import draw_pool
from rlprompt_math.runlog import RunDir

STEPS, BATCH, K, FINALISTS = 4, 3, 2, 2
SETTINGS = {**FAST_RUN, "steps": STEPS, "batch_size": BATCH, "prompts_per_question": K, "finalists": FINALISTS,
            "prompt_length": 2, "exemplar_pool": 6, "answer_forms": ["bare", "spaced"]}


class CountingEngine:
    """The engine, keeping the (prompt, question) rows it is asked to answer, rendered (cache hits included)."""

    def __init__(self, engine):
        self.engine, self.asked = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, texts, **kwargs):
        self.asked += list(texts)
        return self.engine.generate(texts, **kwargs)


@pytest.fixture(scope="module")
def problems():
    """Two kinds of questions: training, validation."""
    mixed = generate_problems(56, seed=0, kinds=["arithmetic", "word_one_step"])
    return mixed[:44], mixed[44:]


def _trained(agent_name, engine, problems, *, run=None, seed=0, **settings):
    """(the trained agent, its summary, the rows the engine was asked to answer) for one agent at SETTINGS."""
    train, val = problems
    config = check_config(RunConfig.from_flat({**SETTINGS, "agent": agent_name, "seed": seed, **settings}))
    pool, _ = draw_pool({"train": train, "validation": val, "test": []}, size=config.policy.exemplar_pool,
                        seed=seed, forms=config.policy.answer_forms)
    counting = CountingEngine(engine)
    env = training.build_env(config, counting, train, pool=pool)
    agent, _ = training.make_agent(config, env, engine=counting, run=run, val_problems=val)
    return agent, agent.train(progress=False), list(counting.asked)


@pytest.fixture(scope="module")
def trained(tiny_engine, problems, tmp_path_factory):
    """`trained(name)`: (agent, summary, rows asked, its run directory), trained once per module (a test that needs
    a second, independent run trains it itself; identical seeds: tests/test_agent_loop.py)."""
    runs = {}

    def get(name):
        if name not in runs:
            run = RunDir(tmp_path_factory.mktemp(name))
            runs[name] = (*_trained(name, tiny_engine, problems, run=run), run)
        return runs[name]

    return get


def test_retrieval_shows_each_question_its_nearest_pool_problems():
    # Four pool problems along known directions (their mean is 0, so centring leaves them as they are).
    keys = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])
    searched = [0, 0, 1, 3]  # two exemplar slots (not read), answer form 1, instruction word 3
    policy = NearestExemplars(1, 5, [5, 5, 2], shots=2, pool_keys=keys, actions=searched)
    questions = torch.tensor([[0.9, 0.5, 0], [0, 0.2, 1], [-1, -1, -0.9]])
    # Slot value i shows pool problem i - 1, the most similar first; the form and words are the searched ones.
    assert policy.greedy(questions).tolist() == [[1, 2, 1, 3], [3, 2, 1, 3], [4, 3, 1, 3]]
    three = NearestExemplars(1, 5, [5, 5, 5, 2], shots=3, pool_keys=keys, actions=[0, 0, 0, 1, 3])
    assert three.greedy(questions[:1]).tolist() == [[1, 2, 3, 1, 3]]


def test_knn_retrieves_each_question_its_own_nearest_pool_problems_in_training_and_after(trained, tiny_engine,
                                                                                          problems):
    agent, _, asked, run = trained("knn")
    pool = agent.space.pool
    own = tiny_engine.question_features([p.question for p in pool.problems])
    assert agent.policy.greedy(own)[:, 0].tolist() == [i + 1 for i in range(len(pool))]  # each is its own nearest
    # Candidates are form and words alone (exemplar slots "none"): the exemplars come from retrieval.
    assert all(actions[:2] == (0, 0) for actions in agent.prompt_rewards)
    # What training scores for each question is what the kept policy writes for it: its own exemplars.
    train = problems[0][:6]
    kept = list(agent.policy.actions.tolist())
    _, infos = agent.env.score(train, [kept] * len(train))
    written = policy_prompts(agent.policy, agent.space, train, tiny_engine)
    assert [i["prompt"] for i in infos] == [str(p) for p in written]
    assert len({str(p) for p in written}) > 1  # not one prompt for all
    # The finalists met the validation questions the same way: the kept one's block of the last rows asked is
    # each validation question with its own exemplars.
    val = problems[1]
    kept_rows = [tiny_engine.render(p, q.question) for p, q in zip(policy_prompts(agent.policy, agent.space, val,
                                                                                  tiny_engine), val)]
    finalist_rows = asked[-FINALISTS * len(val):]
    assert kept_rows in [finalist_rows[i * len(val):(i + 1) * len(val)] for i in range(FINALISTS)]
    # Saved and reloaded, the pool's features rebuilt from the engine, it writes the same prompts.
    loaded, space, _ = load_policy(run.path / POLICY_BEST, tiny_engine)
    assert isinstance(loaded, NearestExemplars) and "keys" not in dict(loaded.state_dict())  # rebuilt, not saved
    questions = problems[1]
    assert ([str(p) for p in policy_prompts(loaded, space, questions, tiny_engine)]
            == [str(p) for p in policy_prompts(agent.policy, agent.space, questions, tiny_engine)])


def test_both_agents_spend_exactly_random_searchs_oracle_pairs(trained, problems):
    spent = {name: (len(trained(name)[2]), trained(name)[1]["oracle_pairs"]) for name in ("random", "knn", "cluster")}
    training_pairs, finalist_pairs = STEPS * K * BATCH, FINALISTS * len(problems[1])
    assert spent["knn"] == spent["cluster"] == spent["random"] == (training_pairs + finalist_pairs,) * 2, spent
    assert len(trained("cluster")[0].searches) == 2  # one cluster per kind: the budget was split, not doubled
    # knn draws what random search draws at the same seed (the same batches, the same forms and words); only
    # the exemplars differ.
    assert ({actions[2:] for actions in trained("knn")[0].prompt_rewards}
            == {actions[2:] for actions in trained("random")[0].prompt_rewards})


def test_the_cluster_policy_writes_a_prompt_per_cluster_and_reloads_the_same(trained, tiny_engine, problems):
    agent, summary, _, run = trained("cluster")
    assert summary["clusters"] == 2 and sum(summary["cluster_sizes"]) == len(problems[0])
    questions = problems[0] + problems[1]
    policy = agent.policy
    clusters = policy.assign(tiny_engine.question_features([p.question for p in questions])).tolist()
    prompts = [prompt_label(p) for p in policy_prompts(policy, agent.space, questions, tiny_engine)]
    by_cluster = {c: {p for p, cc in zip(prompts, clusters) if cc == c} for c in set(clusters)}
    assert len(by_cluster) == 2 and all(len(written) == 1 for written in by_cluster.values())  # one per cluster
    assert by_cluster[0] != by_cluster[1]
    # Saved and reloaded (the centroids are in the file), it writes the same prompt for every question, as
    # `run.py prompt` does.
    loaded, space, meta = load_policy(run.path / POLICY_BEST, tiny_engine)
    assert isinstance(loaded, ClusterPrompts) and meta["policy"]["clusters"] == 2
    assert [prompt_label(p) for p in policy_prompts(loaded, space, questions, tiny_engine)] == prompts
    run.write_config(RunConfig.from_flat({**SETTINGS, "agent": "cluster"}).to_flat())
    printed = run_prompts(run.path, [q.question for q in questions[:5]], engine=tiny_engine)
    assert [entry["prompt"] for entry in printed] == prompts[:5]


def test_kmeans_finds_separated_groups_and_merges_a_cluster_too_small_for_a_batch():
    generator = torch.Generator().manual_seed(0)
    groups = [torch.tensor(direction) * 5 + 0.1 * torch.randn(10, 3, generator=generator)
              for direction in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0])]
    features = torch.cat(groups)
    _, centroids, assignment = kmeans(features, 3, seed=0)
    assert len(centroids) == 3
    assert all(len(set(assignment[i * 10:(i + 1) * 10].tolist())) == 1 for i in range(3))  # each group whole
    assert len(set(assignment.tolist())) == 3
    lone = torch.cat([features[:20], features[20:22]])  # a third group of 2 questions
    _, centroids, assignment = kmeans(lone, 3, seed=0, min_size=3)
    assert len(centroids) == 2 and torch.bincount(assignment).min() >= 3


def test_cluster_search_resumes_to_the_same_kept_policy(resume_matches_whole_run):
    whole, resumed = resume_matches_whole_run(
        {**SETTINGS, "agent": "cluster", "kinds": "arithmetic,word_one_step", "val_size": 4, "test_size": 2,
         "num_problems": 80, "checkpoint_every": 2, "no_final_eval": True}, crash_at=3, resumes_at=2)
    assert len(whole.agent.searches) == 2  # one search per kind, each resumed with its own candidates
    assert [s.prompt_rewards for s in resumed.agent.searches] == [s.prompt_rewards for s in whole.agent.searches]
    assert torch.equal(resumed.agent.policy.actions, whole.agent.policy.actions)


def test_cluster_search_refuses_finalists_a_cluster_cannot_have_sampled(tiny_engine, problems):
    """Each cluster compares `finalists` of its own candidates on its validation questions: with fewer sampled in
    a cluster, the run would spend fewer pairs than random search at the same settings."""
    with pytest.raises(ConfigError, match="--finalists must be <= 4"):  # 2 clusters, 2 steps each, 2 candidates a step
        _trained("cluster", tiny_engine, problems, finalists=5)
