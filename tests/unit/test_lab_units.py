"""Lab pieces that need no running service: ports, pid files, MM2 connector configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from baton.errors import LabError
from baton.lab.config import LabPorts, single_domain_document, topology_document
from baton.lab.lab import Lab, is_lab_topology
from baton.lab.processes import LabProcess
from baton.replication.mm2.connectors import connector_config, connector_name
from baton.settings import Topology, topologies_from_document
from tests.conftest import wait_until


def test_ports_derive_from_one_base_and_do_not_collide():
    ports = LabPorts(23000)
    values = list(ports.all().values())
    assert len(set(values)) == len(values) == 7
    assert ports.broker("east") == 23092 and ports.broker("west") == 23192 and ports.connect == 23083
    assert ports.prefect == 23042 and ports.metrics == 23090


def test_a_topology_is_the_labs_when_it_names_the_lab_brokers(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_LAB_PORT_BASE", "23000")
    monkeypatch.setenv("BATON_HOME", str(tmp_path))  # no lab topology file there

    def orders(document: dict) -> Topology:
        return topologies_from_document(document, "test")[0]

    ours = topology_document(LabPorts(23000))
    assert is_lab_topology(orders(ours))
    assert not is_lab_topology(orders(topology_document(LabPorts(24000))))
    ours["regions"]["west"]["bootstrap_servers"] = "10.0.0.7:9092"
    assert not is_lab_topology(orders(ours))


def test_stale_pid_file_is_detected_and_removed(tmp_path):
    process = LabProcess("east", tmp_path / "east")
    process.directory.mkdir()
    # A live pid that is not a lab process (this test runner) must never be trusted.
    process.pid_file.write_text(str(os.getpid()))
    assert process.pid() is None
    assert not process.pid_file.exists()
    process.pid_file.write_text("999999999")
    assert process.state() == "down"


def test_pid_file_is_trusted_only_for_the_marked_process(tmp_path):
    process = LabProcess("west", tmp_path / "west")
    process.directory.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", process.marker])
    try:
        process.pid_file.write_text(str(child.pid))
        wait_until(lambda: process.marker.encode() in Path(f"/proc/{child.pid}/cmdline").read_bytes(),
                   5, "the child to exec")
        assert process.pid() == child.pid
        assert process.state() == "running"
        assert process.stop(timeout=5) is True
        assert process.pid() is None
    finally:
        child.kill()
        child.wait()


def test_up_names_a_port_taken_by_something_else(tmp_path, monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # a port nobody else uses, taken by "something else"
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("BATON_LAB_PORT_BASE", str(port - 92))  # east broker = base + 92
        lab = Lab(home=tmp_path / "lab")
        with pytest.raises(LabError, match=f"port {port} \\(east broker\\)"):
            lab._check_ports()
    assert not any(p.pid_file.exists() for p in lab.processes.values())


def topology(policy: str = "default") -> Topology:
    return Topology(**single_domain_document(LabPorts(19000), policy))


def test_connectors_write_where_they_must():
    t = topology()
    source = connector_config(t, "source", "east", "west")
    assert source["connector.class"].endswith("MirrorSourceConnector")
    assert source["producer.override.bootstrap.servers"] == "127.0.0.1:19192"  # into west
    assert source["sync.topic.acls.enabled"] == "false"  # fencing ACLs never travel
    heartbeat = connector_config(t, "heartbeat", "east", "west")
    assert heartbeat["producer.override.bootstrap.servers"] == "127.0.0.1:19092"  # into east
    reverse = connector_config(t, "source", "west", "east")
    assert reverse["source.cluster.alias"] == "west"
    assert reverse["producer.override.bootstrap.servers"] == "127.0.0.1:19092"
    assert connector_name(t, "checkpoint", "west", "east") == "mm2-orders-west-east-checkpoint"


def test_identity_policy_is_selectable():
    source = connector_config(topology("identity"), "source", "east", "west")
    assert source["replication.policy.class"].endswith("IdentityReplicationPolicy")
    assert source["topics"] == r"orders\..*"  # the lab mirrors every orders.* topic


def test_default_topics_are_exactly_the_domain_topics_escaped():
    document = single_domain_document(LabPorts(19000))
    document["replication"].pop("topics_pattern")
    document["domain"]["topics"] = ["orders.events", "orders.audit+v2"]
    source = connector_config(Topology(**document), "source", "east", "west")
    assert source["topics"] == r"orders\.events|orders\.audit\+v2"


def test_a_process_just_started_is_tracked_while_its_cmdline_is_still_empty(tmp_path):
    """Right after Popen returns, /proc/<pid>/cmdline is empty for a moment: that once made the
    lab drop a starting Connect worker's pid file and start a second worker."""
    import time

    from baton.lab.processes import LabProcess

    seen = []
    for trial in range(5):
        process = LabProcess(f"sleeper{trial}", tmp_path / f"sleeper{trial}")
        process.start_python(["-c", "import time; time.sleep(30)"])
        try:
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                seen.append(process.state())
        finally:
            process.stop()
        assert process.state() == "down" and not process.pid_file.exists()
    assert seen and set(seen) == {"running"}


def test_tail_reads_the_end_of_a_large_log_only(tmp_path):
    process = LabProcess("connect", tmp_path / "connect")
    process.directory.mkdir()
    assert process.tail() == ""  # no log yet
    line = "x" * 99 + "\n"
    with process.log_file.open("w") as log:  # 20 MB of one line repeated, then the ones that matter
        log.write(line * 200_000)
        log.write("".join(f"last {i}\n" for i in range(5)))
    assert process.tail(3) == "last 2\nlast 3\nlast 4"
    # A window smaller than the lines asked for returns only whole lines from inside it.
    assert process.tail(50, max_bytes=1000).splitlines()[0] == line.strip()
    assert len(process.tail(50, max_bytes=1000).splitlines()) == (1000 - 35) // 100 + 5
