"""Shared fixtures. Integration tests run against the real lab, started once per session.

A lab that is already running (same BATON_HOME and BATON_LAB_PORT_BASE) is reused and left
running; a lab this session started is stopped at the end (BATON_TEST_KEEP_LAB=1 keeps it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from baton.settings import Topology

pytest_plugins = ["tests.prefect_server"]


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
def lab(launched_prefect):
    """The running lab (baton.lab.lab.Lab), started if needed (beside the session's Prefect server)."""
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


def _admins(topology: Topology) -> dict:
    """New admin clients: a session's clients, after a test killed and restarted a region, spent
    the request timeout (10-30 s) on their first request."""
    from baton.kafka.admin import admin_client

    return {name: admin_client(region) for name, region in topology.regions.items()}


def _groups(admins: dict) -> dict[str, set[str]]:
    """Every region's consumer groups; a region that does not answer is left out."""
    found = {}
    for name, admin in admins.items():
        with contextlib.suppress(Exception):  # a region a test left down: its groups are left alone
            found[name] = {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid}
    return found


@pytest.fixture(autouse=True)
def _drop_test_groups(request):
    """Delete the consumer groups a lab test created, once it ends. MirrorMaker 2 reads and
    checkpoints every group each second: the ~780 a suite run left on east kept the lab's JVMs at
    0.85 cores at rest, 0.38 once deleted (bench/RESULTS.md). A group still in use is kept.
    MM2 restarts the checkpoint task that was assigned a deleted group up to a second later:
    a test that needs steady replication waits for it (`wait_mm2_steady`)."""
    if not {"lab", "topology"} & set(request.fixturenames):
        yield
        return
    from baton.lab.config import LAB_DOMAINS

    topology = request.getfixturevalue("topology")
    before = _groups(_admins(topology))
    yield
    keep = {group for domain in LAB_DOMAINS for group in domain.groups}
    admins = _admins(topology)
    for name, groups in _groups(admins).items():
        new = sorted(groups - before.get(name, groups) - keep)
        if new:
            for future in admins[name].delete_consumer_groups(new, request_timeout=10).values():
                with contextlib.suppress(Exception):  # not empty (a consumer still runs) or gone
                    future.result()


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


# -- PostgreSQL for the audit database ----------------------------------------------------------


def _postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (apt-get install postgresql)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server: $BATON_TEST_POSTGRES_URL, or a throwaway cluster started here."""
    given = os.environ.get("BATON_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = _postgres_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (or set "
                    "BATON_TEST_POSTGRES_URL to a server the tests may create databases on)")
    # PostgreSQL refuses to run as root: run it as the `postgres` user in a directory it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="baton-pg-"))
    data = home / "data"
    if as_user:
        shutil.chown(home, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"),
                    "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request, tmp_path):
    """A fresh, empty audit database URL: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"baton_test_{uuid.uuid4().hex[:10]}"
    dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    from baton.audit.db import dispose_engines

    dispose_engines()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def domain_topology(topology, tmp_path):
    """Factory: the lab topology narrowed to a fresh domain with its own topic in both regions,
    a short lease and a private SQLite audit DB, so authority tests never touch `orders`."""
    from baton.kafka.admin import admin_client, ensure_topics

    def create(lease_ttl: float = 3.0, partitions: int = 1, database_url: str | None = None) -> Topology:
        suffix = uuid.uuid4().hex[:8]
        topic = f"orders.auth-{suffix}"
        for region in topology.regions.values():
            ensure_topics(admin_client(region), {topic: partitions})
        return topology.model_copy(update={
            "domain": topology.domain.model_copy(update={"name": f"auth-{suffix}", "topics": [topic]}),
            "thresholds": topology.thresholds.model_copy(update={"lease_ttl_seconds": lease_ttl}),
            "audit": topology.audit.model_copy(update={
                "database_url": database_url or f"sqlite:///{tmp_path / f'audit-{suffix}.db'}"}),
        })

    return create
