"""Cluster-then-search: a conditioned baseline that needs no RL.

k-means on the training questions' features (`Engine.question_features`), with the centred cosine the Refiner's
pointer uses (`policies.nearest_centroid`: spherical k-means around the training questions' mean feature); k is
`--clusters`, or with 0 (the default) the number of kinds the training problems name (the generator's kinds,
a dataset's `--kind-field`), else `DEFAULT_CLUSTERS`. Then random search per cluster: each cluster is a
`RandomSearchAgent` on its own training questions, and the steps go to the clusters in turn (step s to cluster
s mod k), so every step spends what a random-search step spends (K candidates x `--batch-size` questions) and
the total equals random search's at the same settings. A cluster with fewer training questions than a batch is
merged into the others (k-means is run again without it), so each of its steps draws a full batch. At the end
each cluster keeps its prompt by random search's rule, its finalists (`--finalists`) compared on the
validation questions nearest its centroid: together they spend what random search's finalists spend. At
inference a question gets the prompt of its nearest centroid (`policies.ClusterPrompts`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rlprompt_math.checkpoint import POLICY_BEST, POLICY_LAST
from rlprompt_math.config import ConfigError
from rlprompt_math.policies import ClusterPrompts, nearest_centroid

from .base import Agent
from .finalists import prompt_rewards_from_json, prompt_rewards_to_json, ranked_prompts
from .random_search import RandomSearchAgent

__all__ = ["DEFAULT_CLUSTERS", "ClusterSearchAgent", "cluster_count", "kmeans"]

DEFAULT_CLUSTERS = 4  # --clusters 0 on problems that name no kind: 7-8 of 30 steps each


def cluster_count(problems, clusters: int = 0) -> int:
    """`clusters`, or with 0 the number of kinds the problems name (all of them name one), else DEFAULT_CLUSTERS."""
    if clusters:
        return int(clusters)
    kinds = {p.kind for p in problems}
    return len(kinds) if None not in kinds else DEFAULT_CLUSTERS


def _lloyd(features: torch.Tensor, center: torch.Tensor, centroids: torch.Tensor, iterations: int = 100):
    """Lloyd's iterations of spherical k-means from `centroids`: (centroids, each row's cluster). A centroid is
    `center` plus the unit mean direction of its members' centred features, so `nearest_centroid` (the rule
    the cluster policy uses at inference) assigns with exactly these centroids."""
    units = torch.nn.functional.normalize(features - center, dim=-1)
    centroids = centroids.clone()
    for _ in range(iterations):
        assignment = nearest_centroid(features, centroids, center)
        moved = centroids.clone()
        for j in range(len(centroids)):
            members = units[assignment == j]
            if len(members):  # an empty cluster keeps its centroid (and is merged away if too small)
                moved[j] = center + torch.nn.functional.normalize(members.sum(0), dim=0)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids, nearest_centroid(features, centroids, center)


def kmeans(features: torch.Tensor, k: int, seed: int, *, min_size: int = 1):
    """(center, centroids [k', D], each row's cluster) of spherical k-means on `features` [N, D], started by
    k-means++ (seeded), with k' <= k: while a cluster has fewer than `min_size` members, the smallest is dropped
    and Lloyd's runs again from the rest. No listed dependency has a k-means (scikit-learn and SciPy are not
    among them), hence these few lines of Lloyd's."""
    features = features.float()
    center = features.mean(0)
    units = torch.nn.functional.normalize(features - center, dim=-1)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(units)))]
    while len(chosen) < min(k, len(units)):
        # k-means++: the next centroid drawn in proportion to its squared distance to the nearest one chosen.
        distance = (2 - 2 * units @ units[chosen].T).clamp(min=0).min(1).values.double().numpy()
        if distance.sum() <= 0:  # fewer distinct questions than k
            break
        chosen.append(int(rng.choice(len(units), p=distance / distance.sum())))
    centroids, assignment = _lloyd(features, center, center + units[chosen])
    sizes = torch.bincount(assignment, minlength=len(centroids))
    while len(centroids) > 1 and int(sizes.min()) < min_size:
        keep = torch.arange(len(centroids)) != int(sizes.argmin())
        centroids, assignment = _lloyd(features, center, centroids[keep])
        sizes = torch.bincount(assignment, minlength=len(centroids))
    return center, centroids, assignment


class ProblemSubset:
    """The environment, training on some of its problems (one cluster's); everything else is the environment's."""

    def __init__(self, env, problems):
        self.env, self.problems = env, list(problems)

    def __getattr__(self, name):
        return getattr(self.env, name)


class ClusterSearchAgent(Agent):
    name = "cluster"
    chooses_exemplars = True  # each cluster's random search samples the whole prompt space, exemplar slots included
    equal_budget = True  # random search's pairs, shared out among the clusters
    validates_during_training = False  # as random search: each cluster's finalists meet validation at the end

    @classmethod
    def validations_planned(cls, config) -> int:
        # `finalists` per cluster, each on its share of the validation questions: random search's `finalists`
        return RandomSearchAgent.validations_planned(config)

    @classmethod
    def finalists_for(cls, pairs: int, config) -> int:
        """The finalists that make a run at `config` spend `pairs` oracle pairs: random search's number, its plan
        being this one's."""
        return RandomSearchAgent.finalists_for(pairs, config)

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        features = torch.as_tensor(env.observe(env.problems), dtype=torch.float32)
        k = cluster_count(env.problems, config.clusters)
        self.center, self.centroids, assignment = kmeans(features, k, config.seed,
                                                         min_size=min(config.batch_size, len(env.problems)))
        if config.steps < len(self.centroids):
            raise ConfigError(f"--agent cluster gives each of its {len(self.centroids)} clusters at least one step: "
                              f"--steps must be >= {len(self.centroids)} (or fewer --clusters)")
        fewest = config.steps // len(self.centroids) * config.prompts_per_question  # a cluster's candidates, at least
        if self.val_problems and config.finalists > fewest:  # it would spend fewer pairs than random search's plan
            raise ConfigError(f"--agent cluster samples at least {fewest} candidates in each of its "
                              f"{len(self.centroids)} clusters: --finalists must be <= {fewest} (or more --steps, "
                              "fewer --clusters)")
        self.searches: list[RandomSearchAgent] = []
        for c in range(len(self.centroids)):
            members = [p for p, a in zip(env.problems, assignment.tolist()) if a == c]
            search = RandomSearchAgent(ProblemSubset(env, members), config, run=run, engine=self.engine)
            search.rng = self.rng  # one random stream, the run's: a resumed run continues it exactly
            self.searches.append(search)
        self.policy: ClusterPrompts | None = None  # once training is over

    @classmethod
    def from_config(cls, config, env, *, engine, run=None, val_problems=()):
        return cls(env, config.algorithm, run=run, val_problems=val_problems, engine=engine)

    def update(self) -> dict:
        search = self.searches[self.step % len(self.searches)]
        search.step, spent = self.step, search.oracle_pairs
        metrics = search.update()
        self.oracle_pairs += search.oracle_pairs - spent
        return {**metrics, "oracle_pairs": self.oracle_pairs}

    def validation_due(self) -> bool:
        return False

    def step_pairs(self) -> int:
        return self.searches[self.step % len(self.searches)].step_pairs()  # the cluster whose turn it is

    def cluster_policy(self, rows: list) -> ClusterPrompts:
        space = self.space
        return ClusterPrompts(space.prompt_length, len(space.vocab), space.factor_sizes,
                              feature_dim=self.centroids.shape[1], clusters=len(self.centroids), center=self.center,
                              centroids=self.centroids, actions=rows)

    def prompt_policy(self) -> ClusterPrompts:
        """The chosen prompts once training is over; before, each cluster's best mean training reward so far (a
        cluster not searched yet: the empty prompt, as an untrained policy writes)."""
        if self.policy is not None:
            return self.policy
        return self.cluster_policy([list(ranked_prompts(s.prompt_rewards)[0][0]) if s.prompt_rewards else None
                                    for s in self.searches])

    def finish(self) -> dict:
        val_clusters = []
        if self.val_problems:
            features = torch.as_tensor(self.env.observe(self.val_problems), dtype=torch.float32)
            val_clusters = nearest_centroid(features, self.centroids, self.center).tolist()
        rows, correct, validated = [], 0.0, 0
        for c, search in enumerate(self.searches):
            if not search.prompt_rewards:  # stopped before its turn: the empty prompt
                rows.append(None)
                continue
            search.val_problems = [q for q, cluster in zip(self.val_problems, val_clusters) if cluster == c]
            search.run = None  # it chooses its cluster's prompt; this run saves the cluster policy below
            search.oracle_pairs = spent = self.oracle_pairs  # the run's count: --max-oracle-pairs caps it
            search.finish()
            self.oracle_pairs += search.oracle_pairs - spent
            self.stopped = self.stopped or search.stopped
            rows.append(search.policy.actions)
            if not math.isnan(search.best_val):
                correct += search.best_val * len(search.val_problems)
                validated += len(search.val_problems)
        self.best_val = correct / validated if validated else float("nan")  # NaN: not validated
        self.policy = self.cluster_policy(rows)
        for name in (POLICY_BEST, POLICY_LAST):
            self.save_prompt(name)
        return {"clusters": len(self.searches), "cluster_sizes": [len(s.env.problems) for s in self.searches]}

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {"cluster_prompt_rewards": [prompt_rewards_to_json(s.prompt_rewards) for s in self.searches]}

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        saved = meta["cluster_prompt_rewards"]
        if len(saved) != len(self.searches):
            raise ValueError(f"the state holds {len(saved)} clusters' candidates, this run has {len(self.searches)}")
        for search, rewards in zip(self.searches, saved):
            search.prompt_rewards = prompt_rewards_from_json(rewards)
