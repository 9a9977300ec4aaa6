"""llama.cpp's `llama-server`, built from PyPI sources and started on 127.0.0.1: a real
OpenAI-compatible server for the served engine's tests, `bench/engines.py`, and users who want one
without a GPU.

    python -m rlprompt_math.servers.llama_cpp build          # once: ~/.cache/rlprompt_math/llama.cpp-<version>
    python -m rlprompt_math.servers.llama_cpp serve --port 8080

The `llama-cpp-python` sdist on PyPI vendors llama.cpp's sources; `build` downloads it with pip and
compiles the `llama-server` and `llama-quantize` targets (CPU only, static). `serve` re-exports the
embedded default model as F16 first: llama.cpp's Q4_1 kernels round activations to 8 bits and change
about half the greedy answers, while an F16 export computes what the `transformers` engine computes
from the same file (which dequantizes it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .process import free_port, stop_on_signals, stop_process_group, wait_ready

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # its sdist vendors the llama.cpp sources built here
TARGETS = ("llama-server", "llama-quantize")


class LlamaCppError(RuntimeError):
    """llama.cpp could not be built or started; the message says why."""


def home() -> Path:
    """Where the build lives: $RLPROMPT_LLAMA_CPP_DIR, or a per-version folder in the user's cache."""
    custom = os.environ.get("RLPROMPT_LLAMA_CPP_DIR")
    if custom:
        return Path(custom)
    return Path.home() / ".cache" / "rlprompt_math" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def binary(name: str) -> Path:
    return home() / "bin" / name


def is_built() -> bool:
    return all(binary(t).is_file() for t in TARGETS)


def _run(command: list[str], log, **kwargs) -> None:
    log("$ " + " ".join(command))
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode:
        raise LlamaCppError(f"{' '.join(command[:3])} ... failed (exit {done.returncode}):\n{done.stdout[-3000:]}")


def build(jobs: int | None = None, log=print) -> Path:
    """Download the sources with pip and build the targets into `home()/bin` (skipped when built)."""
    if is_built():
        return home() / "bin"
    cmake = shutil.which("cmake")
    if cmake is None or shutil.which("c++") is None:
        raise LlamaCppError("building llama-server needs cmake and a C++ compiler: pip install cmake ninja, and "
                            "install g++ (apt install g++)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="llama-cpp-build-") as scratch:
        scratch = Path(scratch)
        # Only this package as source: `--no-binary :all:` would also build its build dependencies
        # (CMake itself) from source just to read the sdist's metadata.
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(scratch)], log)
        archive = next(scratch.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(scratch, members=members, filter="data")
        source = next(scratch.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = scratch / "build"
        _run([cmake, "-S", str(source), "-B", str(build_dir), *generator, "-DCMAKE_BUILD_TYPE=Release",
              "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DGGML_NATIVE=ON"], log)
        _run([cmake, "--build", str(build_dir), "--target", *TARGETS, "-j", str(jobs)], log)
        out = home() / "bin"
        out.mkdir(parents=True, exist_ok=True)
        for target in TARGETS:
            shutil.copy2(build_dir / "bin" / target, out / target)
    return out


def export_f16(gguf: Path, log=print) -> Path:
    """An F16 re-export of `gguf` next to the build (made once), by llama-quantize."""
    out = home() / f"{Path(gguf).stem}.F16.gguf"
    if not out.is_file():
        partial = out.with_suffix(".partial")
        _run([str(binary("llama-quantize")), "--allow-requantize", str(gguf), str(partial), "F16"], log)
        partial.rename(out)
    return out


@contextlib.contextmanager
def serve(gguf: Path | None = None, *, port: int | None = None, slots: int = 16, context: int = 0,
          threads: int | None = None, alias: str = "smollm2", log_path: Path | None = None,
          ready_timeout_s: float = 120.0, log=print):
    """Start llama-server on 127.0.0.1 (the embedded default as F16 unless `gguf` is given); yields the
    server (`.base_url`, `.process`, `.stop()`, `.start()`) and stops it on exit."""
    if gguf is None:
        from ..engines.transformers.loading import default_gguf_path

        gguf = export_f16(default_gguf_path(), log=log)
    server = LlamaServer(Path(gguf), port=port or free_port(), slots=slots, context=context, threads=threads,
                         alias=alias, log_path=log_path, ready_timeout_s=ready_timeout_s)
    try:
        server.start()  # inside the try: a Ctrl-C while it loads stops it too
        yield server
    finally:
        server.stop()


class LlamaServer:
    """One llama-server process that can be stopped and started again on the same port."""

    def __init__(self, gguf: Path, *, port: int, slots: int, context: int, threads: int | None, alias: str,
                 log_path: Path | None, ready_timeout_s: float):
        self.gguf, self.port, self.slots, self.alias = gguf, port, slots, alias
        # Each slot gets context/slots tokens; 512 per slot holds a rendered question and its answer.
        self.context = context or 512 * slots
        self.threads = threads or os.cpu_count() or 1
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        if not binary("llama-server").is_file():
            raise LlamaCppError(f"{binary('llama-server')} is not built: "
                                "python -m rlprompt_math.servers.llama_cpp build")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(binary("llama-server")), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
             "--parallel", str(self.slots), "--cont-batching", "--ctx-size", str(self.context),
             "--threads", str(self.threads), "--alias", self.alias, "--no-webui"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # stopped as a group by stop()
        self._wait_ready()

    def _wait_ready(self) -> None:
        failure = wait_ready(self.process, f"http://127.0.0.1:{self.port}/health", self.ready_timeout_s, poll_s=0.25)
        if failure:
            self.stop()
            raise LlamaCppError(f"llama-server {failure} (log: {self.log_path or 'not kept'})")

    def stop(self) -> None:
        """Stop the server, requests in flight or not: `process.stop_process_group` (SIGTERM, a short grace
        period, SIGKILL, the port closed)."""
        problem = stop_process_group(self.process, port=self.port)
        self.process = None
        if problem:
            print(f"llama-server: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    import click

    @click.group()
    def cli():
        """llama.cpp's llama-server from PyPI sources, for `--engine openai` without a GPU."""

    @cli.command("build")
    @click.option("--jobs", type=int, default=None, help="Parallel compile jobs (default: all cores).")
    def build_command(jobs):
        """Download llama-cpp-python's sdist and build llama-server and llama-quantize."""
        start = time.perf_counter()
        print(f"built: {build(jobs)} ({time.perf_counter() - start:.0f} s)")

    @cli.command("serve")
    @click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="A GGUF file (default: the embedded SmolLM2-135M-Instruct, re-exported as F16).")
    @click.option("--port", type=int, default=8080, show_default=True)
    @click.option("--slots", type=int, default=16, show_default=True, help="Parallel sequences.")
    def serve_command(model, port, slots):
        """Serve a model on 127.0.0.1 until interrupted."""
        build()
        stop_on_signals()
        with serve(Path(model) if model else None, port=port, slots=slots) as server:
            print(f"serving at {server.base_url} as model {server.alias!r} (Ctrl-C stops)")
            with contextlib.suppress(KeyboardInterrupt):
                server.process.wait()

    cli(args=argv)


if __name__ == "__main__":
    main()
