"""The frozen LLM behind one interface (`Engine`: render, generate, answer log-probs, features).

  * `base`          -- the interface, `Trace`, `EngineStats` and the errors; imports no engine;
  * `transformers`  -- `TransformersEngine`, the model in this process (`--engine transformers`);
  * `openai`        -- `OpenAIEngine`, OpenAI-compatible servers (`--engine openai`).

`load_engine` is the only place that knows every engine. It imports them when called, so importing
this package (for the interface) does not load `transformers`.
"""

from __future__ import annotations

from ..config import EngineConfig
from .base import Engine, EngineCapabilityError, EngineError, EngineStats, Trace

__all__ = ["Engine", "EngineCapabilityError", "EngineError", "EngineStats", "Trace", "load_engine",
           "pin_engine_settings"]


def load_engine(config: EngineConfig) -> Engine:
    """The engine the `[engine]` settings describe (`--engine transformers` or `--engine openai`)."""
    from .transformers import TransformersEngine

    local_settings = dict(model=config.model, device=config.device, dtype=config.dtype,
                          load_in_8bit=config.load_in_8bit, template=config.template)
    if config.engine == "transformers":
        return TransformersEngine.load(**local_settings)
    from .openai import OpenAIEngine

    # The local model supplies the tokenizer, the chat template and the question features.
    local = TransformersEngine.load(**local_settings)
    return OpenAIEngine(list(config.base_url), served_model=config.served_model, local=local,
                        timeout=config.request_timeout, max_retries=config.max_retries,
                        concurrency=config.concurrency, prompts_per_request=config.prompts_per_request)


def pin_engine_settings(engine_config, *, given: str = "as asked") -> str:
    """Decide `--device auto` and `--dtype auto` once, before the model loads, and write the decision into the
    settings: the run's config.yaml then records the dtype and device the run used, and `run.py evaluate` and
    `--resume` load the model the same way (auto is decided by a speed probe on a CPU, which may choose
    another dtype another time). Returns the header's words: the dtype and why."""
    from .transformers.loading import auto_dtype, dtype_name, resolve_device, resolve_dtype

    device = resolve_device(engine_config.device)
    if engine_config.dtype == "auto":
        dtype, why = auto_dtype(device)
        why = f"--dtype auto chose it: {why}"
    else:
        dtype, why = resolve_dtype(engine_config.dtype, device), given
    engine_config.device, engine_config.dtype = str(device), dtype_name(dtype)
    return f"{engine_config.dtype} on {engine_config.device} ({why})"
