"""The served API over real HTTP: a uvicorn subprocess on a free loopback port."""

import os
import socket
import subprocess
import sys
import time

import httpx

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthz_over_http(tmp_path):
    port = free_port()
    env = dict(os.environ, CITELOOP_DATA_DIR=str(tmp_path / "var"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "citeloop.cli", "serve", "--port", str(port)], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.3)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok" and body["collections"] == []
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["info"]["title"] == "citeloop"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
