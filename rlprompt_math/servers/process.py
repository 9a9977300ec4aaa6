"""What every server launcher here shares: a free local port, waiting for a started server to answer, and
stopping it for certain (`stop_process_group`, `stop_on_signals`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time

GRACE_S = 5.0          # after SIGTERM, how long a server may take to finish before its group gets SIGKILL
KILLED_WAIT_S = 10.0   # after SIGKILL, how long to wait for the group to be gone and its port closed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, timeout_s: float, poll_s: float = 0.5) -> str | None:
    """Poll `url` until it answers 200 (None), or return why not: the process exited, or the time ran out."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with code {process.returncode} at start"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return None
        except requests.RequestException:
            pass
        time.sleep(poll_s)
    return f"was not ready within {timeout_s:.0f} s"


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies, which hold no port, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: a member exists, maybe a zombie; count it
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait_until(condition, timeout_s: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None:
            process.poll()  # reap the leader, so it does not linger as a zombie member of its group
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_process_group(process: subprocess.Popen | None, *, port: int | None = None, grace_s: float = GRACE_S,
                       killed_wait_s: float = KILLED_WAIT_S) -> str | None:
    """Stop a server started with `start_new_session=True` and every process it started (its process group),
    whatever it is doing: SIGTERM to the group, up to `grace_s` for the group to end, then SIGKILL to the
    group, then wait (at most `killed_wait_s`) until the group is gone and `port` (if given) is closed.
    Bounded: it returns within about grace_s + killed_wait_s, with None, or a line saying what is still
    there. Interrupted itself (a second Ctrl-C), it still sends the SIGKILL before it lets go."""
    if process is None:
        return None
    pgid = process.pid  # start_new_session=True: the server leads its own group (pgid == its pid)
    leads = True
    with contextlib.suppress(ProcessLookupError):
        leads = process.poll() is not None or os.getpgid(process.pid) == pgid
    send = (lambda sig: os.killpg(pgid, sig)) if leads else process.send_signal  # else: the process alone
    ended = (lambda: not _group_alive(pgid)) if leads else (lambda: process.poll() is not None)
    try:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(signal.SIGTERM)
        _wait_until(ended, grace_s, process)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(signal.SIGKILL)  # the group's stragglers; a no-op when it ended in its grace period
    gone = _wait_until(ended, killed_wait_s, process)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1.0)
    # a process's sockets close as it ends: a port still open after that is held outside the group
    closed = port is None or _wait_until(lambda: not port_open(port), 2.0)
    if gone and closed:
        return None
    still = [what for what, ok in (("processes of its group", gone), (f"port {port} open", closed)) if not ok]
    return f"server {process.pid} stopped with SIGKILL, but {' and '.join(still)} after {killed_wait_s:.0f} s"


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def stop_on_signals() -> None:
    """Make SIGINT (Ctrl-C), SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, so the
    `finally` that stops a server runs for all three. SIGINT is set even where it was inherited ignored (a
    command started in the background by a non-interactive shell ignores SIGINT: a Ctrl-C sent to it would
    do nothing); SIGTERM by default ends Python without running any `finally`, and a server started in its
    own session (which a signal to our process group does not reach) would outlive us and keep its port.
    After the first such signal the three are ignored, so a second Ctrl-C cannot cut the stop short (it is
    bounded: `stop_process_group`)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for number in STOP_SIGNALS:
        signal.signal(number, stop)
