"""A real Prefect server for the tests: started once per session on a free loopback port.

`BATON_TEST_PREFECT_URL` reuses a running server instead. The server keeps its SQLite
database in a temporary PREFECT_HOME, so nothing leaks between sessions.
"""

from __future__ import annotations

import os
import shutil

import pytest

from baton.lab.prefect_server import launch_prefect_server


@pytest.fixture(scope="session")
def launched_prefect():
    """The session's Prefect server process, launched without waiting: the lab fixture asks for
    it first, so the server's start (~15 s) overlaps the lab's."""
    if os.environ.get("BATON_TEST_PREFECT_URL"):
        yield None
        return
    launched = launch_prefect_server()
    yield launched
    launched.server.stop()
    shutil.rmtree(launched.server.home, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api(launched_prefect) -> str:
    """PREFECT_API_URL of a running Prefect server; also set for this process and subprocesses."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    existing = os.environ.get("BATON_TEST_PREFECT_URL")
    server = None if existing else launched_prefect.wait()
    url = existing or server.url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # for subprocesses (CLI, flow processes, workers)
    with temporary_settings(updates={PREFECT_API_URL: url}):  # for this process's client
        yield url
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous
