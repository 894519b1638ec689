"""A citeloop API server in a subprocess for the bench scripts: started on a free loopback port, ready when
/readyz says so, terminated on exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eval.feedback_loop import free_port

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def running_server(data_dir: Path, workers: int = 1, code: Path = REPO, ready_timeout_s: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of uvicorn serving `api.app:create_app` from the checkout `code` over `data_dir`."""
    import httpx

    port = free_port()
    env = dict(os.environ, CITELOOP_DATA_DIR=str(data_dir), CITELOOP_RATE_LIMIT_PER_MINUTE="100000000", PYTHONPATH=str(code))
    command = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(command, cwd=code, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_timeout_s
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.5)
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=60)


def admin_key(data_dir: Path, code: Path = REPO) -> str:
    """A new admin key for all collections, made by the served checkout's own code (another checkout's would
    migrate the database to a schema the served one does not know)."""
    import uuid

    make_key = f"from citeloop.keys import create_key; print(create_key('bench-{uuid.uuid4().hex[:8]}', 'admin', ['*']))"
    env = dict(os.environ, CITELOOP_DATA_DIR=str(data_dir), PYTHONPATH=str(code))
    return subprocess.run([sys.executable, "-c", make_key], cwd=code, env=env, capture_output=True, text=True, check=True).stdout.split()[-1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
