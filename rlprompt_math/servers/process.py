"""What every server launcher here shares: a free local port, and waiting for a started server to answer."""

from __future__ import annotations

import socket
import subprocess
import time


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
