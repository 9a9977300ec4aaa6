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

import numpy as np

from .finalists import ranked_prompts
from .random_search import RandomSearchAgent

__all__ = ["HalvingAgent", "halving_schedule"]


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


class HalvingAgent(RandomSearchAgent):
    """Random search's candidates, its budget and its finalists, spent by successive halving; see the module
    docstring."""

    name = "halving"

    def __init__(self, env, config, *, run=None, val_problems=None, engine=None):
        super().__init__(env, config, run=run, val_problems=val_problems, engine=engine)
        total = config.steps * self.step_pairs()
        self.rungs = halving_schedule(total, min(config.batch_size, len(env.problems)), config.finalists)
        self.rung = -1  # the rung being scored (-1: none started)
        self.survivors: list[tuple] = []  # the rung's candidates, as action tuples
        self.queue: list[tuple[int, int]] = []  # the rung's pairs not yet sent: (survivor index, problem index)
        self.leftover = total - sum(n * q for n, q in self.rungs)  # the last rung's extra pairs, one per survivor

    def _start_rung(self) -> None:
        """Promote the better half (the first rung: sample the candidates) and queue their new questions."""
        self.rung += 1
        count, questions = self.rungs[self.rung]
        if self.rung == 0:
            self.survivors = self._distinct_sample(count)
        else:
            ranked = ranked_prompts({s: self.prompt_rewards[s] for s in self.survivors})
            self.survivors = [actions for actions, _ in ranked[:count]]
        problems = self.env.problems
        last = self.rung == len(self.rungs) - 1
        draw = questions + (1 if last and self.leftover else 0)
        index = self.rng.choice(len(problems), size=min(draw, len(problems)), replace=False).tolist()
        # question-major: a step's pairs are few questions under many prompts, as the other agents' steps are
        self.queue = [(s, q) for q in index[:questions] for s in range(len(self.survivors))]
        if last and self.leftover:  # the remainder that does not divide: one more question for the best ranked
            self.queue += [(s, index[-1]) for s in range(min(self.leftover, len(self.survivors)))]

    def _distinct_sample(self, count: int) -> list[tuple]:
        """`count` distinct uniformly random prompts (fewer only where the space holds fewer)."""
        size = int(np.prod(self.space.nvec.astype(float)))
        rows: dict[tuple, None] = {}
        while len(rows) < min(count, size):
            for row in self.space.sample(self.rng, count - len(rows)):
                rows.setdefault(tuple(int(a) for a in row))
        return list(rows)[:count]

    def update(self) -> dict:
        needed, rewards_all, infos_all = self.step_pairs(), [], []
        while needed:
            if not self.queue:
                if self.rung + 1 >= len(self.rungs):
                    break  # the schedule is spent (a run with more steps than planned: nothing left to send)
                self._start_rung()
            take, self.queue = self.queue[:needed], self.queue[needed:]
            needed -= len(take)
            actions = np.array([self.survivors[s] for s, _ in take])
            pairs = [self.env.problems[q] for _, q in take]
            rewards, infos = self.env.score(pairs, actions, batch_label=f"step {self.step}, rung {self.rung}")
            self.oracle_pairs += len(pairs)
            for (s, _), reward in zip(take, rewards.tolist()):
                self.record_rewards([list(self.survivors[s])], [[reward]])
            rewards_all.append(rewards)
            infos_all += infos
        if not infos_all:
            return {"step": self.step, "oracle_pairs": self.oracle_pairs}
        return self.step_metrics(np.concatenate(rewards_all), infos_all)

    def candidates(self) -> dict[tuple, list[float]]:
        """The rung's survivors (the last rung's, once training is over: the finalists come from them)."""
        scored = {s: self.prompt_rewards[s] for s in self.survivors if s in self.prompt_rewards}
        return scored or self.prompt_rewards

    def finish(self) -> dict:
        super().finish()
        return {"rungs": [[n, q] for n, q in self.rungs]}

    def extra_state(self) -> tuple[dict, dict]:
        tensors, meta = super().extra_state()
        meta.update({"rung": self.rung, "survivors": [list(s) for s in self.survivors],
                     "queue": [list(pair) for pair in self.queue]})
        return tensors, meta

    def load_extra_state(self, tensors: dict, meta: dict) -> None:
        super().load_extra_state(tensors, meta)
        self.rung = meta["rung"]
        self.survivors = [tuple(s) for s in meta["survivors"]]
        self.queue = [tuple(pair) for pair in meta["queue"]]
