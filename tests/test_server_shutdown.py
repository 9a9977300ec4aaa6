"""Servers stop within seconds, requests in flight or not (issue 34), tested without vLLM or llama-server.

A stand-in server (a small Python script) does what makes a real one hard to stop: it ignores SIGTERM and
SIGINT, answers HTTP on 127.0.0.1 (one request hangs for ever once started), and starts a grandchild that
also ignores both and holds the listening socket, so the port closes only when the whole process group
is gone. It is stopped through `servers.process.stop_process_group` (what vLLM and llama-server use), and
as `python run.py serve vllm` stops it: run.py started in its own process group, the stand-in passed as
`--vllm-python`, then SIGTERM to run.py's group (the server, in a session of its own, does not get it)
or SIGINT to run.py with SIGINT inherited ignored (as a command started in the background by a
non-interactive shell has it). Bounds are generous; every wait is for a condition, none a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlprompt_math.servers.process import GRACE_S, _group_alive, free_port, port_open, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
MARGIN_S = 20.0  # beyond the grace period: SIGKILL, reaping and the port check take well under a second

STUBBORN_SERVER = r'''
import http.server, json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
state = os.environ["STUBBORN_STATE"]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":  # a request in flight that never finishes
            open(state + ".in_flight", "w").close()
            time.sleep(3600)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(3600)"],
                         pass_fds=(server.fileno(),))
info = {"pid": os.getpid(), "pgid": os.getpgid(0), "grandchild": child.pid, "port": server.server_address[1]}
with open(state + ".tmp", "w") as f:
    json.dump(info, f)
os.replace(state + ".tmp", state)
print("ready", flush=True)
server.serve_forever()
'''


@pytest.fixture
def stubborn(tmp_path):
    """An executable stand-in server (`stubborn.path`), and where it writes its pids and port."""
    path = tmp_path / "stubborn-python"
    path.write_text(f"#!{sys.executable}\n{STUBBORN_SERVER}")
    path.chmod(0o755)
    state = tmp_path / "state.json"
    env = {**os.environ, "STUBBORN_STATE": str(state), "PYTHONPATH": str(ROOT)}
    started = []
    yield type("Stubborn", (), {"path": path, "state": state, "env": env, "started": started})
    for pgid in started:  # whatever a failing test left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


def _info(stubborn, timeout_s: float = 60.0) -> dict:
    _wait_for(stubborn.state.exists, timeout_s, "the stand-in server to start")
    info = json.loads(stubborn.state.read_text())
    stubborn.started.append(info["pgid"])
    _wait_for(lambda: port_open(info["port"]), timeout_s, "its port to open")
    return info


def _request_in_flight(stubborn, port: int) -> None:
    """Start a request that the server never finishes, and wait until the server is handling it."""
    def request():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1)  # returns when the server's end closes

    threading.Thread(target=request, daemon=True).start()
    marker = Path(str(stubborn.state) + ".in_flight")
    _wait_for(marker.exists, 60.0, "the request to be in flight")


def _assert_all_gone(info: dict) -> None:
    assert not _group_alive(info["pgid"]), "a process of the server's group is still running"
    for pid in (info["pid"], info["grandchild"]):
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone
        assert state == b"Z", f"process {pid} is still running (state {state!r})"
    assert not port_open(info["port"]), "the server's port is still open"


def test_stop_process_group_ends_a_stubborn_server_its_grandchild_and_its_port(stubborn):
    process = subprocess.Popen([str(stubborn.path), "--port", "0"], env=stubborn.env, start_new_session=True,
                               stdout=subprocess.DEVNULL)
    info = _info(stubborn)
    assert info["pgid"] == process.pid
    _request_in_flight(stubborn, info["port"])
    start = time.monotonic()
    problem = stop_process_group(process, port=info["port"])
    elapsed = time.monotonic() - start
    assert problem is None
    assert GRACE_S - 0.5 <= elapsed < GRACE_S + MARGIN_S  # it ignored SIGTERM: the grace period, then SIGKILL
    assert process.returncode == -signal.SIGKILL
    _assert_all_gone(info)


def test_a_server_that_obeys_sigterm_is_not_kept_for_the_grace_period(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                                "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                                "time.sleep(3600)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    port = int(process.stdout.readline())
    start = time.monotonic()
    assert stop_process_group(process, port=port) is None
    assert time.monotonic() - start < GRACE_S  # SIGTERM ends it at once
    assert process.returncode == -signal.SIGTERM and not port_open(port)


def test_stopping_a_server_that_already_exited_is_a_no_op():
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    process.wait()
    assert stop_process_group(process) is None
    assert stop_process_group(None) is None


def _serve(stubborn, tmp_path, *, ignore_sigint: bool = False) -> tuple[subprocess.Popen, dict]:
    """`python run.py serve vllm` with the stand-in as vLLM's Python, in a process group of its own,
    read until it says it is ready."""
    model = tmp_path / "model"
    model.mkdir()

    def preexec():
        os.setpgrp()
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen([sys.executable, "run.py", "serve", "vllm", "--model", str(model),
                                "--vllm-python", str(stubborn.path), "--port", str(free_port())],
                               cwd=ROOT, env=stubborn.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=preexec)
    lines: list[str] = []

    def read():
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    _wait_for(lambda: any(line.startswith("Ctrl-C stops") for line in lines) or process.poll() is not None,
              300.0, "run.py serve vllm to be ready")
    assert process.poll() is None, "run.py serve vllm exited:\n" + "".join(lines)
    return process, _info(stubborn)


@pytest.mark.parametrize("how", ["SIGTERM to run.py's process group", "SIGINT, inherited ignored"])
def test_run_py_serve_stops_its_server_on_sigterm_and_sigint(stubborn, tmp_path, how):
    process, info = _serve(stubborn, tmp_path, ignore_sigint=how.startswith("SIGINT"))
    assert info["pgid"] != process.pid  # the server has a session of its own: our group's signals miss it
    _request_in_flight(stubborn, info["port"])
    start = time.monotonic()
    if how.startswith("SIGTERM"):
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=GRACE_S + MARGIN_S)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - start < GRACE_S + MARGIN_S
    assert code == 0  # a requested stop, done cleanly
    _assert_all_gone(info)
