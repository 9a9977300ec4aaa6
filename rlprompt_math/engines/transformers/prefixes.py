"""Shared prefixes in a prefill: which tokens of a batch are computed once for several rows.

The rows of one oracle batch share tokens in two ways that training produces all the time:

  * every row: the chat template's header (the *common* prefix, computed once at batch size 1);
  * groups of rows: the header and question that the K prompts on one question share (the prompt
    comes after the question), or the exemplar turns that one prompt's B questions share (a *group*
    prefix, computed once per group).

The rest of each row is its own. `plan_prefill` chooses the groups: sorted by their tokens, rows with a
common prefix sit side by side, and a dynamic programme over that order picks the contiguous groups that
save the most tokens. Each level is one forward pass over left-padded rows, and padding is computed like
any token, so the plan is kept only where it costs fewer token-rows than the common prefix alone (`cost`).
Two levels cover both shapes; a deeper tree would cost a forward pass per level.
The decoder (`decoding.BatchedDecoding._forward_rows`) runs the plan into one KV cache whose rows are
[common][group prefix, left-padded][own tokens, left-padded], positions counted over real tokens only,
so every row sees exactly the tokens it would see alone. Nothing outlives the batch: the memory is the
batch's own KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MIN_SHARED_PREFIX = 8  # a shorter common prefix is not worth a separate forward pass
MIN_GROUP_PREFIX = 4   # groups may share less: their forward pass is paid once for all groups
FORWARD_COST = 32      # the fixed cost of one more forward pass, in token-rows (kernel launches, Python)
MAX_ORDERED_ROWS = 1024  # prefix_order plans at most this many rows at once (the plan is quadratic in a group)
SHARING_MODES = ("groups", "common", "off")
"""groups: the common prefix and group prefixes (the default); common: the common prefix only (the engine
before group prefixes); off: every row computes all its tokens (the reference the tests compare with)."""


@dataclass(frozen=True)
class PrefillPlan:
    """How a batch's rows are prefilled: `common` tokens for all, then `groups`, then each row's own."""

    common: int
    groups: tuple[tuple[int, tuple[int, ...]], ...]
    """(shared tokens after the common prefix, member rows) for each group of two or more rows."""
    lengths: tuple[int, ...]
    """Each row's token count."""

    def cost(self) -> int:
        """Token-rows the plan runs through the model, padding included, plus a forward pass's fixed cost."""
        n, common = len(self.lengths), self.common
        own = [length - common - self.group_length(i) for i, length in enumerate(self.lengths)]
        group_level = len(self.groups) * max(length for length, _ in self.groups) + FORWARD_COST if self.groups else 0
        return common + group_level + n * max(own, default=0)

    def group_length(self, row: int) -> int:
        for length, members in self.groups:
            if row in members:
                return length
        return 0

    @property
    def computed_tokens(self) -> int:
        """Real tokens the plan runs through the model (padding excluded)."""
        return sum(self.lengths) - self.reused_tokens

    @property
    def reused_tokens(self) -> int:
        """Tokens whose KV one row computes and other rows reuse."""
        n = len(self.lengths)
        return (self.common * (n - 1) if n else 0) + sum((len(m) - 1) * length for length, m in self.groups)


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    length = min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < length and row[k] == first[k]:
            k += 1
        length = k
    return length


def _pair_prefix(a: Sequence[int], b: Sequence[int], start: int, limit: int) -> int:
    k = 0
    while k < limit and a[start + k] == b[start + k]:
        k += 1
    return k


def shared_groups(rows: Sequence[Sequence[int]], common: int = 0, keep: int = 1) -> list[tuple[int, tuple[int, ...]]]:
    """Groups of two or more rows that share at least MIN_GROUP_PREFIX tokens after the first `common`,
    chosen to save the most tokens: [(shared tokens after `common`, member rows)]; each member keeps
    `keep` tokens of its own."""
    n = len(rows)
    lengths = [len(r) for r in rows]
    limits = [length - common - keep for length in lengths]  # tokens a row may share beyond `common`
    order = sorted(range(n), key=lambda i: rows[i][common:])
    # lcp[k]: tokens the k-th and (k+1)-th sorted rows share after `common`
    lcp = [_pair_prefix(rows[order[k]], rows[order[k + 1]], common,
                        min(limits[order[k]], limits[order[k + 1]], lengths[order[k]] - common,
                            lengths[order[k + 1]] - common))
           for k in range(n - 1)]
    # best[j]: tokens saved by the best grouping of the first j sorted rows; a group [i, j) of m rows
    # sharing s tokens saves (m - 1) * s. Groups only grow while they share MIN_GROUP_PREFIX tokens.
    best = [0] * (n + 1)
    start = list(range(-1, n))
    for j in range(1, n + 1):
        best[j], start[j] = best[j - 1], j - 1
        shared = limits[order[j - 1]]
        for i in range(j - 2, -1, -1):
            shared = min(shared, lcp[i], limits[order[i]])
            if shared < MIN_GROUP_PREFIX:
                break
            saved = best[i] + (j - 1 - i) * shared
            if saved > best[j]:
                best[j], start[j] = saved, i
    groups = []
    j = n
    while j > 0:
        i = start[j]
        if j - i > 1:
            members = tuple(sorted(order[i:j]))
            shared = min(min(lcp[i:j - 1]), min(limits[r] for r in members))
            groups.append((shared, members))
        j = i
    return groups


def plan_prefill(rows: Sequence[Sequence[int]], keep: int = 1, mode: str = "groups") -> PrefillPlan:
    """The prefill plan for token `rows`, each of which keeps at least `keep` tokens of its own (the
    positions whose logits are read)."""
    if mode not in SHARING_MODES:
        raise ValueError(f"prefix sharing {mode!r}: choose one of {', '.join(SHARING_MODES)}")
    lengths = tuple(len(r) for r in rows)
    n = len(rows)
    if mode == "off" or n < 2:
        return PrefillPlan(0, (), lengths)
    common = min(common_prefix_length(rows), min(lengths) - keep)
    if common < MIN_SHARED_PREFIX:
        common = 0
    if mode == "common":
        return PrefillPlan(common, (), lengths)
    groups = shared_groups(rows, common, keep)
    plain = PrefillPlan(common, (), lengths)
    if not groups:
        return plain
    # The group level is padded to its longest prefix: a group that saves less than its padding costs
    # goes (the longest group pays no padding, so it stays).
    longest = max(length for length, _ in groups)
    pruned = [(length, m) for length, m in groups if (len(m) - 1) * length > longest - length]
    candidates = [plain, PrefillPlan(common, tuple(sorted(groups, key=lambda g: g[1])), lengths)]
    if pruned and len(pruned) < len(groups):
        candidates.append(PrefillPlan(common, tuple(sorted(pruned, key=lambda g: g[1])), lengths))
    return min(candidates, key=PrefillPlan.cost)


def prefix_order(rows: Sequence[Sequence[int]], keep: int = 1) -> list[int]:
    """An order of `rows` for cutting into batches: the rows of each group (`shared_groups` of the whole
    set) side by side, so a batch holds few groups and computes each shared prefix once; by length
    within a group and between groups and loose rows, so batches need little padding."""
    lengths = [len(r) for r in rows]
    if not 2 <= len(rows) <= MAX_ORDERED_ROWS:
        return sorted(range(len(rows)), key=lambda i: lengths[i])
    key = {i: (lengths[i], -1, lengths[i]) for i in range(len(rows))}
    common = min(common_prefix_length(rows), min(lengths) - keep)
    for g, (_, members) in enumerate(shared_groups(rows, max(common, 0), keep)):
        shortest = min(lengths[i] for i in members)
        for i in members:
            key[i] = (shortest, g, lengths[i])
    return sorted(range(len(rows)), key=key.__getitem__)
