"""Start the real `tokenlens ui` command as a process on a free loopback port, for tests that need a server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: `python -m tokenlens` from the repo root: works even where the editable install predates a new package.
TOKENLENS = [sys.executable, "-m", "tokenlens"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_ui(
    results_url: str, *, env: dict[str, str] | None = None, startup_timeout_s: float = 30.0
) -> Iterator[str]:
    """Run `tokenlens ui --results URL` until the block ends; yields its base URL (http://127.0.0.1:PORT)."""
    port = free_port()
    command = [*TOKENLENS, "ui", "--results", results_url, "--port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"`{' '.join(command)}` exited with {process.returncode}:\n{output}")
            try:
                with urllib.request.urlopen(f"{base_url}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`{' '.join(command)}` did not answer /api/health within {startup_timeout_s} s")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
