"""Shared fixtures. Integration tests run against the real lab, started once per session.

A lab that is already running (same BATON_HOME and BATON_LAB_PORT_BASE) is reused and left
running; a lab this session started is stopped at the end (BATON_TEST_KEEP_LAB=1 keeps it).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import pytest

from baton.settings import Topology


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    """Poll until predicate() is truthy; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def lab():
    """The running lab (baton.lab.lab.Lab), started if needed."""
    from baton.lab.lab import Lab

    lab = Lab(progress=lambda message: print(message, flush=True))
    was_running = all(p.pid() is not None for p in lab.processes.values())
    lab.up()
    yield lab
    if not was_running and not os.environ.get("BATON_TEST_KEEP_LAB"):
        lab.down()


@pytest.fixture(scope="session")
def topology(lab) -> Topology:
    return lab.topology()[0]


@pytest.fixture
def new_topic(topology):
    """Factory: create a uniquely named topic on a region (default east); MM2 mirrors `orders.*`."""
    from baton.kafka.admin import admin_client, ensure_topics

    def create(partitions: int = 3, region: str = "east", config: dict | None = None,
               prefix: str = "orders.t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        ensure_topics(admin_client(topology.regions[region]), {name: partitions}, config)
        return name

    return create


@pytest.fixture
def new_group():
    """Factory: a unique consumer group name the lab's consumer principal may use."""
    return lambda: f"orders-t-{uuid.uuid4().hex[:8]}"
