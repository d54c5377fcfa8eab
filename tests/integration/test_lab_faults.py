"""Fault injection on the real lab: kill, hang, restart a region; stop and start replication.

Each test leaves the lab as it found it (both regions up, replication RUNNING).
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from baton.errors import RegionUnreachable
from baton.kafka.admin import check_reachable, end_offsets, kept_admin_clients
from tests.conftest import wait_until
from tests.integration.test_lab import consume_all, wait_for_mirror

pytestmark = pytest.mark.integration


def produce(topology, topic: str, count: int, partitions: int, tag: str) -> None:
    producer = Producer(topology.regions["east"].client_config("producer"))
    for i in range(count):
        producer.produce(topic, key=f"{tag}-{i}".encode(), value=f"{tag}-{i}".encode(),
                         partition=i % partitions)
    assert producer.flush(15) == 0


def replication_running(lab) -> bool:
    return lab.status()["replication"]["state"] == "RUNNING"


def test_kill_makes_region_unreachable_and_restart_brings_it_back_with_its_data(lab, topology, new_topic):
    topic = new_topic(partitions=2)
    produce(topology, topic, 10, 2, "before-kill")

    lab.fault("kill", "east")
    assert lab.status()["regions"]["east"]["up"] is False
    started = time.monotonic()
    with pytest.raises(RegionUnreachable, match="east"):
        check_reachable("east", topology.regions["east"], timeout=3)
    assert time.monotonic() - started < 15  # bounded, not hanging forever

    lab.fault("restart", "east")
    assert lab.status()["regions"]["east"]["up"] is True
    records = consume_all(topology.regions["east"].client_config("admin"), topic, 2, 10, timeout=30)
    assert sorted(m.value() for m in records) == sorted(f"before-kill-{i}".encode() for i in range(10))
    wait_until(lambda: replication_running(lab), 90, "replication RUNNING after restart")


def test_hang_then_resume_and_a_kept_client_never_hides_the_hang(lab, topology):
    east = topology.regions["east"]
    assert check_reachable("east", east) is not check_reachable("east", east)  # nothing kept outside
    with kept_admin_clients():
        kept = check_reachable("east", east)
        assert check_reachable("east", east) is kept  # one client for the run, probed each time
        lab.fault("hang", "east")
        try:
            # SIGSTOP reaches every JVM thread asynchronously: on a busy machine /proc shows "T" a
            # moment later.
            wait_until(lambda: lab.status()["regions"]["east"]["process"] == "hung", 15, "east shown as hung")
            with pytest.raises(RegionUnreachable, match="east"):
                check_reachable("east", east, timeout=3)  # the kept client's probe is not answered
            with pytest.raises(RegionUnreachable, match="east"):
                check_reachable("east", east, timeout=3)  # nor a new one's
        finally:
            lab.fault("resume", "east")
        wait_until(lambda: lab.status()["regions"]["east"]["up"], 30, "east up after resume")
        [again] = wait_until(lambda: _answers(east), 30, "east answering a metadata request")
        assert again is not kept  # the one whose probe failed was dropped
        assert check_reachable("east", east) is again


def _answers(region) -> list:
    """[the client] once east answers (an idle client is falsy: len() is its queue length)."""
    try:
        return [check_reachable("east", region, timeout=3)]
    except RegionUnreachable:
        return []


def test_replication_stop_halts_the_flow_and_start_resumes_with_nothing_lost(lab, topology, new_topic):
    topic = new_topic(partitions=3)
    produce(topology, topic, 30, 3, "first")
    mirror = wait_for_mirror(topology, topic)
    west = topology.regions["west"].client_config("admin")
    wait_until(lambda: sum(end_offsets(west, mirror, 3)) == 30, 60, "first 30 records on west")

    lab.fault("stop", "replication")
    try:
        assert lab.status()["replication"]["state"] == "STOPPED"
        produce(topology, topic, 60, 3, "during-stop")
        time.sleep(3)  # three of MM2's refresh intervals in the lab (1 s), 30 of its polls
        assert sum(end_offsets(west, mirror, 3)) == 30
    finally:
        lab.fault("start", "replication")
    wait_until(lambda: sum(end_offsets(west, mirror, 3)) >= 90, 60, "90 records on west after start")
    values = [m.value() for m in consume_all(topology.regions["west"].client_config("consumer"),
                                             mirror, 3, 90)]
    assert len(values) == 90 and len(set(values)) == 90  # nothing lost, nothing doubled
    assert sum(end_offsets(west, mirror, 3)) == 90
