"""Saving and loading policies and training state: safetensors + JSON metadata, never pickle.

Each checkpoint is ONE file (weights as tensors, everything else as JSON in the safetensors
metadata), written to a temporary file, flushed to disk, then moved over the old one with
`os.replace`, which is atomic: a crash mid-write leaves the previous checkpoint whole.

A policy file records the toolkit version, the model fingerprint (name, vocabulary size and hash,
hidden size) and the action vocabulary (with exemplar slots, also the prompt space: shots, answer forms
and the exemplar pool itself, so the file decodes its prompts on its own); loading it for another model
or vocabulary fails with a message that says what differs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .config import PolicyConfig
from .policies import FixedPrompt, PromptPolicy, build_policy
from .prompt_space import PromptSpace
from .templates import Prompt
from .vocab import ActionVocab

POLICY_FORMAT = "rlprompt-math-policy"
STATE_FORMAT = "rlprompt-math-train-state"
FORMAT_VERSION = 1

# The files of a run directory, by name: every writer and reader uses these.
CONFIG = "config.yaml"  # the exact settings of the run
SPLIT_MANIFEST = "splits.json"  # which problems went to train, validation and test (data.SPLITS names them)
METRICS = "metrics.csv"  # one row per training step
SAMPLES = "samples.jsonl"  # the best and worst prompts of each step
TENSORBOARD = "tensorboard"  # a directory: the metrics as TensorBoard events
POLICY_BEST = "policy_best.safetensors"  # the kept policy: the best on validation
POLICY_LAST = "policy_last.safetensors"  # the policy at the last checkpoint
STATE_LAST = "state_last.safetensors"  # what --resume continues from: optimizer, random-number states, counters
POLICY_FILES = {"best": POLICY_BEST, "last": POLICY_LAST}  # `run.py evaluate --checkpoint`
LEARNING_CURVE = "learning_curve.png"
SUMMARY = "summary.json"  # what training returned
FINAL_EVAL = "final_eval"  # a directory: the held-out comparison at the end of training
EXEMPLARS = "exemplars.json"  # the exemplar pool (--shots > 0): --resume reads it instead of asking the model
PROMPT = "prompt.json"  # the kept prompt as chat messages a user can paste into any chat API


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, from another format version, or for another model."""


# ---- strict JSON: every JSON file the project writes goes through here ------------------------------


def json_safe(value):
    """`value` as strict JSON (RFC 8259) can hold it: a non-finite float (NaN, an infinity: `best_val_accuracy`
    before any validation, a metric of no questions) becomes None (null), numpy scalars Python numbers, tuples
    lists. Python's json writes NaN and -Infinity by default, which strict parsers (JavaScript, jq, Go) refuse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def dumps_json(value, **kwargs) -> str:
    """`json.dumps` that writes strict JSON: non-finite floats as null (`json_safe`), never NaN or Infinity."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def atomic_save(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()} or {"_empty": torch.zeros(1)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"json": dumps_json(metadata)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read(path: str | Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("json", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "_empty"}
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    if metadata.get("format") != expected_format:
        raise CheckpointError(f"{path} is not a {expected_format} file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {metadata.get('format_version')}; this toolkit "
                              f"({__version__}) reads version {FORMAT_VERSION}")
    return tensors, metadata


# ---- policies ------------------------------------------------------------------------------------


def save_policy(path, policy: PromptPolicy, space: PromptSpace | ActionVocab, engine, **extra) -> None:
    """`space`: the prompt space the policy writes in (or, for instruction slots only, its vocabulary)."""
    vocab = space.vocab if isinstance(space, PromptSpace) else space
    metadata = {"format": POLICY_FORMAT, "format_version": FORMAT_VERSION, "toolkit_version": __version__,
                "policy": policy.config(), "model": engine.fingerprint(), "vocab": vocab.to_dict(),
                "prompt_example": None, **extra}
    if isinstance(space, PromptSpace) and space.shots:
        metadata["space"] = space.to_dict()
    atomic_save(path, dict(policy.state_dict()), metadata)


def check_model(metadata: dict, engine, path) -> None:
    saved, current = metadata.get("model", {}), engine.fingerprint()
    for key in ("tokenizer_hash", "vocab_size", "hidden_size"):
        if saved.get(key) != current.get(key):
            raise CheckpointError(
                f"{path} was trained for model {saved.get('model')!r} ({key} {saved.get(key)}), but the loaded "
                f"model is {current['model']!r} ({key} {current.get(key)}). Load it with the model it was "
                "trained for (--model), or use only its prompt texts on another model.")


# Policy settings renamed since policy files were first written, by policy kind: old key -> its name now.
# "hidden_size" was the refiners' width and the soft prompt's embedding size; it now means only the LLM's.
LEGACY_POLICY_KEYS = {"refiner": {"hidden_size": "width"}, "autoregressive": {"hidden_size": "width"},
                      "soft": {"hidden_size": "embedding_dim"}}


def _policy_settings(metadata: dict) -> dict:
    """A policy file's `policy` entry under today's names (older files: LEGACY_POLICY_KEYS)."""
    settings = metadata["policy"]
    renamed = LEGACY_POLICY_KEYS.get(settings["kind"], {})
    return {renamed.get(key, key): value for key, value in settings.items()}


def load_policy(path, engine, *, check: bool = True) -> tuple[PromptPolicy, PromptSpace, dict]:
    """(policy, the prompt space it writes in, metadata) from a policy file, for this engine's LLM. The space
    decodes the policy's actions (`policy.prompts(obs, space)`); `space.vocab` is the action vocabulary."""
    tensors, metadata = read(path, POLICY_FORMAT)
    config = _policy_settings(metadata)
    metadata = {**metadata, "policy": config}
    if check and config["kind"] != "fixed":
        check_model(metadata, engine, path)
    vocab = ActionVocab(engine.tokenizer, metadata["vocab"]["token_ids"], metadata["vocab"]["spec"])
    space = (PromptSpace.from_dict(vocab, metadata["space"]) if "space" in metadata
             else PromptSpace(vocab, config["prompt_length"]))
    if config["kind"] == "fixed":
        prompt = Prompt.from_dict(config["prompt"]) if "prompt" in config else config["text"]
        return FixedPrompt(prompt, config["prompt_length"], config["vocab_size"],
                           actions=config.get("actions")), space, metadata
    if vocab.fingerprint() != metadata["vocab"]["fingerprint"]:
        raise CheckpointError(f"{path}: action vocabulary does not match its recorded fingerprint")
    if config.get("factor_sizes", []) != space.factor_sizes:
        raise CheckpointError(f"{path}: the policy's exemplar and answer-form slots {config.get('factor_sizes')} do "
                              f"not match its recorded prompt space {space.factor_sizes}")
    policy = build_policy(config["kind"], engine=engine, space=space,
                          width=config.get("width", PolicyConfig.policy_width),
                          pointer=bool(config.get("pointer_shots")), clusters=config.get("clusters", 1))
    try:
        policy.load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit a {config['kind']} policy: {error}") from error
    return policy.eval(), space, metadata


# ---- training state (optimizer, RNGs, counters) --------------------------------------------------


def save_state(path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    atomic_save(path, tensors, {"format": STATE_FORMAT, "format_version": FORMAT_VERSION,
                                "toolkit_version": __version__, **metadata})


def load_state(path) -> tuple[dict[str, torch.Tensor], dict]:
    return read(path, STATE_FORMAT)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's state dict into tensors + JSON (safetensors holds no nested dicts)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"the checkpoint's optimizer has {len(meta['param_groups'])} parameter group(s), this "
                              f"policy's {len(optimizer.param_groups)}: it was saved by an older version (before the "
                              "refiner's per-group learning rates); start a new run")
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
