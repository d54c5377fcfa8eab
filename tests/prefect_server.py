"""A real Prefect server for the tests: started once per session on a free loopback port.

`BATON_TEST_PREFECT_URL` reuses a running server instead. The server keeps its SQLite
database in a temporary PREFECT_HOME, so nothing leaks between sessions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """PREFECT_API_URL of a running Prefect server; also exported to this process's env."""
    existing = os.environ.get("BATON_TEST_PREFECT_URL")
    process = None
    if existing:
        url = existing
    else:
        home = Path(tempfile.mkdtemp(prefix="baton-prefect-"))
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = os.environ | {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
        log = open(home / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # for subprocesses (CLI, flow processes)
    with temporary_settings(updates={PREFECT_API_URL: url}):  # for this process's client
        yield url
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous
    if process is not None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
