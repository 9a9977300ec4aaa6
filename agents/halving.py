"""Successive halving over sampled prompts, on the same oracle budget as REINFORCE (`--agent halving`).

Best-arm identification in place of uniform evaluation (TRIPLE, Shi et al., NeurIPS 2024): many random
prompts are scored on a few training questions, the better half of them on twice as many new questions,
and so on, until `--finalists` prompts are left; those are compared on the validation questions, as random
search's finalists are, and the best becomes a fixed policy. Every prompt of a rung meets the same
questions (a paired design: question difficulty cancels), and a survivor is ranked by its mean reward over
every question it has met.

The budget is random search's at the same settings: `steps x batch_size x prompts_per_question` training
pairs (`halving_schedule` spends exactly that, the last rung taking what is left), each step sending the next
`batch_size x prompts_per_question` pairs of the schedule, so the loop, --max-oracle-pairs and checkpoints
work as for every agent; then `finalists x val_size` validation pairs. Rung 0 scores each candidate on
`batch_size` questions; with the defaults (30 steps of 8 x 8, 4 finalists) that is 62 prompts on 8
questions, 31 on 16, 15 on 32 and 7 on 64 more, and the 4 best of those 7 meet the validation questions
(random search at the same pairs: 240 prompts on 8 questions each).

Optuna's `SuccessiveHalvingPruner` is not used: it is the asynchronous variant (each trial is compared with
the trials that reached a rung before it), so with trials run one after another the first ones are never
pruned; a synchronous rung over one batch of prompts is what the budget argument above needs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .finalists import prompt_rewards_from_json, prompt_rewards_to_json, ranked_prompts
from .random_search import RandomSearchAgent

__all__ = ["HalvingAgent", "SuccessiveHalving", "halving_schedule"]


def _rung_sizes(first: int, questions: int, rungs: int, keep: int) -> list[tuple[int, int]]:
    """(candidates, new questions each) per rung: `first` candidates halved (floor, never below `keep`), on
    `questions` doubled each rung."""
    return [(max(keep, first >> r), questions << r) for r in range(rungs)]


def halving_schedule(total: int, questions: int, keep: int = 1) -> list[tuple[int, int]]:
    """The rungs of successive halving that spend exactly `total` pairs: [(candidates, new questions each), ...],
    candidates halving and questions doubling from `questions`, down to `keep` (>= 1) survivors; the most rungs
    the budget allows, then the most first candidates, and what is left over given to the last rung as more
    questions (`HalvingAgent` gives its survivors one more question each, in rank order, for a remainder that
    does not divide among them). A budget too small for even `keep` candidates on `questions` each is one rung
    of as many candidates as it holds, at least one."""
    keep, questions = max(1, int(keep)), max(1, int(questions))
    if total < keep * questions:  # one rung: as many candidates as `questions` each affords, the rest spread
        count = max(1, total // questions)
        return [(count, total // count)] if total else []

    def cost(first, rungs):
        return sum(n * q for n, q in _rung_sizes(first, questions, rungs, keep))

    rungs = 1
    while cost(keep << rungs, rungs + 1) <= total:  # one more rung still affords `keep` at its end
        rungs += 1
    first = keep << (rungs - 1)
    while cost(first + 1, rungs) <= total:
        first += 1
    sizes = _rung_sizes(first, questions, rungs, keep)
    survivors, last = sizes[-1]
    extra = (total - cost(first, rungs)) // survivors  # whole extra questions; the rest (< survivors) in rank order
    return sizes[:-1] + [(survivors, last + extra)]


class SuccessiveHalving:
    """One run of successive halving over `halving_schedule(total, questions, keep)`'s rungs, sent a step at a time
    (`send`): the candidates of the first rung come from its owner (random prompts for `HalvingAgent`, REINFORCE's
    best samples for `--halving-steps`), each later rung the better half by mean reward over every question met
    in this run (`rewards`: only what halving measured). Its state is JSON (`state`, `load`) for checkpoints."""

    def __init__(self, total: int, questions: int, keep: int):
        self.rungs = halving_schedule(total, questions, keep)
        self.leftover = total - sum(n * q for n, q in self.rungs)  # the last rung's extra pairs, one per survivor
        self.rung = -1  # the rung being scored (-1: none started)
        self.survivors: list[tuple] = []  # the rung's candidates, as action tuples
        self.queue: list[tuple[int, int]] = []  # the rung's pairs not yet sent: (survivor index, problem index)
        self.rewards: dict[tuple, list[float]] = {}  # every candidate's rewards in this run

    @property
    def first_count(self) -> int:
        """How many candidates the first rung takes."""
        return self.rungs[0][0] if self.rungs else 0

    def _start_rung(self, rng: np.random.Generator, n_problems: int, first: Callable[[int], list[tuple]]) -> None:
        """Promote the better half (the first rung: `first(count)`'s candidates) and queue their new questions."""
        self.rung += 1
        count, questions = self.rungs[self.rung]
        if self.rung == 0:
            self.survivors = list(first(count))
        else:
            self.survivors = [actions for actions, _ in self.ranked()[:count]]
        last = self.rung == len(self.rungs) - 1
        draw = questions + (1 if last and self.leftover else 0)
        index = rng.choice(n_problems, size=min(draw, n_problems), replace=False).tolist()
        # question-major: a step's pairs are few questions under many prompts, as the other agents' steps are
        self.queue = [(s, q) for q in index[:questions] for s in range(len(self.survivors))]
        if last and self.leftover:  # the remainder that does not divide: one more question for the best ranked
            self.queue += [(s, index[-1]) for s in range(min(self.leftover, len(self.survivors)))]

    def send(self, agent, pairs: int, first: Callable[[int], list[tuple]]) -> tuple[np.ndarray, list[dict]]:
        """Score the schedule's next `pairs` pairs through `agent`'s env (its question stream draws each rung's
        questions; its `oracle_pairs` counts them): (rewards, infos), fewer where the schedule is spent."""
        rewards_all, infos_all = [], []
        while pairs:
            if not self.queue:
                if self.rung + 1 >= len(self.rungs):
                    break  # the schedule is spent (a run with more steps than planned: nothing left to send)
                self._start_rung(agent.rng, len(agent.env.problems), first)
            take, self.queue = self.queue[:pairs], self.queue[pairs:]
            pairs -= len(take)
            actions = np.array([self.survivors[s] for s, _ in take])
            questions = [agent.env.problems[q] for _, q in take]
            rewards, infos = agent.env.score(questions, actions, batch_label=f"step {agent.step}, rung {self.rung}")
            agent.oracle_pairs += len(questions)
            for (s, _), reward in zip(take, rewards.tolist()):
                self.rewards.setdefault(self.survivors[s], []).append(reward)
            rewards_all.append(rewards)
            infos_all += infos
        return (np.concatenate(rewards_all) if rewards_all else np.zeros(0)), infos_all

    def ranked(self) -> list[tuple[tuple, list[float]]]:
        """The rung's survivors with their rewards, the best mean first (`ranked_prompts`), those scored so far."""
        return ranked_prompts({s: self.rewards[s] for s in self.survivors if s in self.rewards})

    def state(self) -> dict:
        return {"rung": self.rung, "survivors": [list(s) for s in self.survivors],
                "queue": [list(pair) for pair in self.queue], "rewards": prompt_rewards_to_json(self.rewards)}

    def load(self, state: dict) -> None:
        self.rung = state["rung"]
        self.survivors = [tuple(s) for s in state["survivors"]]
        self.queue = [tuple(pair) for pair in state["queue"]]
        self.rewards = prompt_rewards_from_json(state["rewards"])


def distinct_sample(space, rng: np.random.Generator, count: int) -> list[tuple]:
    """`count` distinct uniformly random prompts of `space` (fewer only where the space holds fewer)."""
    size = int(np.prod(space.nvec.astype(float)))
    rows: dict[tuple, None] = {}
    while len(rows) < min(count, size):
        for row in space.sample(rng, count - len(rows)):
            rows.setdefault(tuple(int(a) for a in row))
    return list(rows)[:count]


class HalvingAgent(RandomSearchAgent):
    """Random search's candidates, its budget and its finalists, spent by successive halving; see the module
    docstring."""

    name = "halving"

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        self.halving = SuccessiveHalving(config.steps * self.step_pairs(), min(config.batch_size, len(env.problems)),
                                         config.finalists)

    @property
    def rungs(self) -> list[tuple[int, int]]:
        return self.halving.rungs

    def update(self) -> dict:
        rewards, infos = self.halving.send(self, self.step_pairs(),
                                           lambda count: distinct_sample(self.space, self.rng, count))
        if not infos:
            return {"step": self.step, "oracle_pairs": self.oracle_pairs}
        return self.step_metrics(rewards, infos)

    def candidates(self) -> dict[tuple, list[float]]:
        """The rung's survivors (the last rung's, once training is over: the finalists come from them)."""
        return dict(self.halving.ranked()) or self.prompt_rewards

    def finish(self) -> dict:
        super().finish()
        return {"rungs": [[n, q] for n, q in self.rungs]}

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {"halving": self.halving.state()}

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        self.halving.load(meta["halving"])
