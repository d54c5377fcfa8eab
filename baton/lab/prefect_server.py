"""Start a throwaway Prefect server (tests, benchmarks, `baton drill --lab`) as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from baton.errors import LabError
from baton.lab.config import PREFECT_SERVER_SETTINGS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrefectServer:
    url: str  # PREFECT_API_URL
    process: subprocess.Popen
    home: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_prefect_server(timeout: float = 90, *, home: Path | None = None,
                         port: int | None = None) -> PrefectServer:
    """A Prefect server on a free loopback port with its own PREFECT_HOME (SQLite); `home` and
    `port` restart an earlier one with its database (tests of an orchestrator outage)."""
    return launch_prefect_server(home=home, port=port).wait(timeout)


@dataclass
class LaunchedServer:
    """A Prefect server process that may still be starting (its database migrations take ~15 s
    on 2 cores): launch it early, do other work, then `wait`."""
    server: PrefectServer

    def wait(self, timeout: float = 90) -> PrefectServer:
        server = self.server
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if server.process.poll() is not None or time.monotonic() > deadline:
                server.process.kill()
                raise LabError(f"the Prefect server did not start within {timeout:.0f}s; "
                               f"see {server.home / 'server.log'}")
            time.sleep(0.5)


def launch_prefect_server(*, home: Path | None = None, port: int | None = None) -> LaunchedServer:
    """Start the server process of `start_prefect_server` without waiting for it to answer."""
    home = home or Path(tempfile.mkdtemp(prefix="baton-prefect-"))
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | PREFECT_SERVER_SETTINGS | {
        "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    log = open(home / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return LaunchedServer(PrefectServer(url, process, home))
