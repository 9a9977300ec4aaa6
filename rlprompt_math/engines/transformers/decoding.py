"""The `transformers` engine's decoder: continuous batching over a KV cache that it edits.

Rows go in grouped by shared prefix, then by length (`prefixes.prefix_order`). Finished rows leave the batch (and the KV cache) at once; waiting rows
are prefilled and joined to the running batch (`_join_left_padded`), and columns that became padding
for every row are dropped (`_trim_left_padding`). Tokens that rows of a prefill share (the chat
template's header, a question's K prompts, a prompt's exemplar turns) are computed once (`_forward_rows`,
planned by `prefixes.plan_prefill`). `BatchedDecoding` is a mixin of `TransformersEngine`: it uses the
engine's `model`, `tokenizer`, `device`, `stats`, `encode`, `_inputs` (soft prompts), `_line_breaks`
and `prefix_sharing`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterable, Sequence

import torch

from ..base import Trace
from .prefixes import plan_prefill, prefix_order


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    """The keyword `model_class.forward` takes its KV cache by: `cache` where it has that parameter
    (transformers 5.x: passing `past_key_values` warns "`past_key_values` is deprecated and will be removed
    in version 5.40.0 ... Use `cache` instead."), else `past_key_values` (earlier releases)."""
    try:
        parameters = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model, cache) -> dict:
    """`{keyword: cache}` for a forward call of `model`, under the keyword its transformers version takes."""
    return {_cache_keyword(type(model)): cache}


def _join_left_padded(cache, mask: torch.Tensor, other, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows to `cache` (in place); the shorter side is left-padded. Returns the mask."""
    width = max(mask.shape[1], other_mask.shape[1])

    def pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
        missing = width - t.shape[-dim_from_end]
        if not missing:
            return t
        return torch.nn.functional.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0))

    for layer, extra in zip(cache.layers, other.layers):
        layer.keys = torch.cat([pad(layer.keys, 2), pad(extra.keys, 2)], 0)
        layer.values = torch.cat([pad(layer.values, 2), pad(extra.values, 2)], 0)
    return torch.cat([pad(mask, 1), pad(other_mask, 1)], 0)


def _trim_left_padding(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading KV columns that are padding for every row. Returns the mask."""
    used = mask.any(0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        mask = mask[:, start:]
    return mask


class BatchedDecoding:
    """Greedy or sampled decoding of many rows at once, and the batching helpers teacher forcing and
    features share (left padding, positions, length-sorted batches)."""

    def _pad_left(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        # Left padding: real tokens must get positions 0..n-1, as they would unpadded.
        return (mask.cumsum(-1) - 1).clamp(min=0)

    @staticmethod
    def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterable[list[int]]:
        # Sorting by length keeps padding (wasted compute) small in every batch.
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        for start in range(0, len(order), batch_size):
            yield order[start:start + batch_size]

    def _batch_order(self, rows: Sequence[Sequence[int]], keep: int = 1) -> list[int]:
        """The order rows are cut into batches: by shared prefix, then length (`prefixes.prefix_order`)."""
        if self.prefix_sharing != "groups":
            return sorted(range(len(rows)), key=lambda i: len(rows[i]))
        return prefix_order(rows, keep)

    # ---- generation ----------------------------------------------------------------------------

    def _complete(self, texts, *, max_new_tokens, temperature, top_k, stop, stop_when, seed, batch_size, watch):
        encoded = self.encode(texts)
        generator = None
        if temperature != 0:
            generator = torch.Generator(device="cpu").manual_seed(
                seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        # Rows that share a prefix side by side (a prefill computes it once), else by length, so rows
        # decoded side by side need little padding.
        order = self._batch_order(encoded)
        outs, traces = self._decode_stream([encoded[j] for j in order], max_new_tokens, temperature, top_k,
                                           stop, generator, stop_when, batch_size, watch)
        completions: list[str] = [""] * len(texts)
        unsorted: list[Trace] | None = None if traces is None else [None] * len(texts)  # type: ignore[list-item]
        for k, j in enumerate(order):
            completions[j] = outs[k]
            if unsorted is not None:
                unsorted[j] = traces[k]
        return completions, unsorted

    @torch.inference_mode()
    def _decode_stream(self, rows: list[list[int]], max_new_tokens: int, temperature: float,
                       top_k: int | None, stop: list[str], generator,
                       stop_when: Callable[[str], bool] | None, batch_size: int,
                       watch: tuple[int, ...] | None = None) -> tuple[list[str], list[Trace] | None]:
        """Incremental decoding with a KV cache and continuous batching.

        Rows go in in the order given (callers group them by prefix and sort them by length). A finished row leaves the batch
        at once, and when a quarter of the `batch_size` slots are free the next waiting rows are
        prefilled and joined to the running batch: a decode step costs about the same for 8 rows as
        for 32 on a CPU (it is bound by reading the weights), so a full batch is most of the speed.
        With `watch`, each row's step log-probabilities of those ids are kept (one `Trace` per row).
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if max_new_tokens <= 0:
            return [""] * len(rows), None if watch is None else [Trace((), watch, torch.zeros(0, len(watch)))
                                                                 for _ in rows]
        watch_ids = torch.tensor(watch, device=self.device) if watch else None
        recorded: list[list[torch.Tensor]] = [[] for _ in rows]
        eos_ids = self._eos_ids()
        line_breaks = self._line_break_ids() if stop_when is not None else frozenset()
        outputs: list[list[int]] = [[] for _ in rows]
        waiting = list(range(len(rows)))[::-1]  # popped from the end: first rows first
        cache, mask, positions, logits, active = None, None, None, None, None
        # Joining batches needs a cache whose layers are plain per-token tensors (no sliding window).
        can_join = None
        refill_at = max(1, batch_size // 4)
        while True:
            free = batch_size - (0 if active is None else len(active))
            if waiting and (active is None or (can_join and free >= min(refill_at, len(waiting)))):
                take = [waiting.pop() for _ in range(min(free, len(waiting)))]
                new_cache = DynamicCache()
                new_logits, new_mask, new_positions = self._forward_rows([rows[r] for r in take], new_cache)
                self.stats.generated_rows += len(take)
                new_active = torch.tensor(take, device=self.device)
                if active is None:
                    cache, mask, logits, active = new_cache, new_mask, new_logits[:, -1, :], new_active
                    positions = new_positions[:, -1:]
                    can_join = all(type(layer) is DynamicLayer for layer in cache.layers)
                else:
                    mask = _join_left_padded(cache, mask, new_cache, new_mask)
                    logits = torch.cat([logits, new_logits[:, -1, :]], 0)
                    positions = torch.cat([positions, new_positions[:, -1:]], 0)
                    active = torch.cat([active, new_active], 0)
            if active is None or len(active) == 0:
                break
            next_ids = self._pick(logits.float(), temperature, top_k, generator)
            if watch_ids is not None:
                watched = torch.log_softmax(logits.float(), -1)[:, watch_ids].cpu()
            keep = []
            for k, row in enumerate(active.tolist()):
                token = int(next_ids[k])
                if watch_ids is not None:
                    recorded[row].append(watched[k])
                done = token in eos_ids
                if not done:
                    outputs[row].append(token)
                    self.stats.new_tokens += 1
                    if stop:
                        # A stop string ends within the last few tokens; decode only those.
                        tail = self.tokenizer.decode(outputs[row][-16:], skip_special_tokens=True)
                        done = any(s in tail for s in stop)
                    if not done and token in line_breaks:
                        done = stop_when(self.tokenizer.decode(outputs[row], skip_special_tokens=True))
                    done = done or len(outputs[row]) >= max_new_tokens
                if not done:
                    keep.append(k)
            if len(keep) < len(active):
                # Drop finished rows from the batch and from the KV cache, then the columns that
                # are padding for every remaining row.
                keep_t = torch.tensor(keep, dtype=torch.long, device=self.device)
                cache.batch_select_indices(keep_t)
                mask, positions, next_ids, active = mask[keep_t], positions[keep_t], next_ids[keep_t], active[keep_t]
                if len(keep):
                    mask = _trim_left_padding(cache, mask)
            if not keep:
                if not waiting:
                    break
                active = None  # start a fresh batch
                continue
            mask = torch.cat([mask, torch.ones((len(keep), 1), dtype=mask.dtype, device=mask.device)], 1)
            positions = positions + 1
            logits = self.model(input_ids=next_ids.view(-1, 1).to(self.device), attention_mask=mask,
                                position_ids=positions, **cache_argument(self.model, cache),
                                use_cache=True).logits[:, -1, :]
        completions = []
        for row in range(len(rows)):
            text = self.tokenizer.decode(outputs[row], skip_special_tokens=True)
            for s in stop:
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            completions.append(text)
        if watch is None:
            return completions, None
        return completions, [Trace(tuple(outputs[r]), watch,
                                   torch.stack(recorded[r]) if recorded[r] else torch.zeros(0, len(watch)))
                             for r in range(len(rows))]

    def _forward_rows(self, rows: list[list[int]], cache, keep: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run token rows into `cache`; return (logits of the last `keep` positions, mask, positions).

        Shared prefixes are computed once (`prefixes.plan_prefill`): the prefix every row shares at batch
        size 1, then one row per group of rows that share more (a question's K prompts, a prompt's
        exemplar turns), then each row's own tokens. The KV rows are [common][group prefix][own tokens],
        each part left-padded, positions counted over real tokens only, so a row sees exactly the
        tokens it would see alone. Only the last `keep` positions get logits: the LM head is ~20% of a
        token's FLOPs. The returned mask covers the whole cache; positions only the own tokens.
        """
        plan = plan_prefill(rows, keep, self.prefix_sharing)
        n, common = len(rows), plan.common
        self.stats.prefill_tokens += plan.computed_tokens
        self.stats.reused_prefix_tokens += plan.reused_tokens
        device = self.device
        if common:
            prefix = torch.tensor([rows[0][:common]], device=device)
            self.model(**self._inputs(prefix), position_ids=torch.arange(common, device=device)[None],
                       **cache_argument(self.model, cache), use_cache=True, logits_to_keep=1)
        before = torch.ones((n, common), dtype=torch.long, device=device)  # the mask over the cache so far
        starts = [common] * n  # where each row's own tokens begin
        if plan.groups:
            first_rows = [members[0] for _, members in plan.groups]
            segments = [rows[r][common:common + length] for r, (length, _) in zip(first_rows, plan.groups)]
            if common:
                cache.batch_repeat_interleave(len(segments))
            ids, segment_mask = self._pad_left(segments)
            group_mask = torch.cat([before[:len(segments)], segment_mask], 1)
            self.model(**self._inputs(ids), attention_mask=group_mask,
                       position_ids=self._positions(group_mask)[:, common:], **cache_argument(self.model, cache),
                       use_cache=True, logits_to_keep=1)
            # Every row takes its group's KV row; a row in no group takes the first group's, with the
            # group columns masked out.
            group_of = [0] * n
            before = torch.cat([before, torch.zeros((n, segment_mask.shape[1]), dtype=torch.long, device=device)], 1)
            for g, (length, members) in enumerate(plan.groups):
                for r in members:
                    group_of[r] = g
                    starts[r] = common + length
                    before[r] = group_mask[g]
            cache.batch_select_indices(torch.tensor(group_of, device=device))
        elif common:
            cache.batch_repeat_interleave(n)
        ids, own = self._pad_left([row[s:] for row, s in zip(rows, starts)])
        mask = torch.cat([before, own], 1)
        positions = self._positions(mask)[:, before.shape[1]:]
        logits = self.model(**self._inputs(ids), attention_mask=mask, position_ids=positions,
                            **cache_argument(self.model, cache), use_cache=True, logits_to_keep=keep).logits
        return logits, mask, positions

    def _line_break_ids(self) -> frozenset[int]:
        """Token ids whose text holds a line break (computed once per tokenizer)."""
        if self._line_breaks is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._line_breaks = frozenset(i for i, t in enumerate(texts) if "\n" in t)
        return self._line_breaks

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(s) for s in source)
        return ids

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, -1).cpu()
        return torch.multinomial(probs, 1, generator=generator).view(-1).to(logits.device)
