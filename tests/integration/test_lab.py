"""The lab is real: MM2 copies records faithfully, checkpoints groups, and ACLs are enforced."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from baton.kafka.admin import admin_client
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def consume_all(config: dict, topic: str, partitions: int, expected: int, timeout: float = 60) -> list:
    """Read a topic from the beginning (assigned, no group) until `expected` records arrived."""
    consumer = Consumer(config | {"group.id": "orders-t-reader", "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                              KafkaError._PARTITION_EOF):
                    continue
                raise KafkaException(message.error())
            records.append(message)
    finally:
        consumer.close()
    return records


def wait_for_mirror(topology, topic: str) -> str:
    mirror = topology.replication.remote_topic(topic, "east")
    west = admin_client(topology.regions["west"])
    wait_until(lambda: mirror in west.list_topics(timeout=5).topics, 60, f"mirror topic {mirror} on west")
    return mirror


def test_record_is_mirrored_with_same_key_value_headers_and_timestamp(topology, new_topic):
    topic = new_topic(partitions=3)
    producer = Producer(topology.regions["east"].client_config("producer"))
    sent, errors = [], []
    # Explicit timestamps, recent on purpose: the lab checks time retention every 5 s, and a
    # record older than the 7-day retention would be deleted before it could be compared.
    base = int(time.time() * 1000) - 60_000
    for i in range(30):
        record = dict(key=f"k{i}".encode(), value=f"v{i}".encode(),
                      headers=[("trace", f"t{i}".encode()), ("n", str(i).encode())],
                      timestamp=base + i, partition=i % 3)
        producer.produce(topic, **record, on_delivery=lambda e, m: errors.append(e) if e else None)
        sent.append(record)
    assert producer.flush(10) == 0 and errors == []

    mirror = wait_for_mirror(topology, topic)
    assert mirror == f"east.{topic}"
    received = consume_all(topology.regions["west"].client_config("consumer"), mirror, 3, 30)
    got = {(m.partition(), m.key(), m.value(), tuple(m.headers() or ()), m.timestamp()[1])
           for m in received}
    want = {(r["partition"], r["key"], r["value"], tuple(r["headers"]), r["timestamp"]) for r in sent}
    assert got == want


def test_committed_group_offset_produces_checkpoint_on_west(topology, new_topic, new_group):
    topic, group = new_topic(partitions=2), new_group()
    producer = Producer(topology.regions["east"].client_config("producer"))
    for i in range(20):
        producer.produce(topic, value=str(i).encode(), partition=i % 2)
    producer.flush(10)
    wait_for_mirror(topology, topic)
    consumer = Consumer(topology.regions["east"].client_config("consumer")
                        | {"group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 4)], asynchronous=False)
    consumer.close()

    # Checkpoint key = group (INT16 length + UTF-8), downstream topic (same), partition (INT32).
    needle = len(group).to_bytes(2, "big") + group.encode()
    reader = Consumer(topology.regions["west"].client_config("admin")
                      | {"group.id": "baton-t-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    reader.subscribe(["east.checkpoints.internal"])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(seen) < 2:
            message = reader.poll(0.5)
            if message is not None and not message.error() and message.key().startswith(needle):
                seen.add(message.key())
    finally:
        reader.close()
    mirror = f"east.{topic}".encode()
    assert {key[len(needle) + 2: len(needle) + 2 + len(mirror)] for key in seen} == {mirror}
    assert {int.from_bytes(key[-4:], "big") for key in seen} == {0, 1}


def test_acls_are_enforced_principal_without_acl_is_denied_admin_allowed(topology, new_topic):
    topic = new_topic(partitions=1)
    # orders-consumer has no WRITE ACL anywhere.
    denied = Producer(topology.regions["east"].client_config("consumer") | {"message.timeout.ms": 10000})
    errors = []
    denied.produce(topic, value=b"x", on_delivery=lambda e, m: errors.append(e))
    denied.flush(15)
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    allowed = Producer(topology.regions["east"].client_config("admin"))
    results = []
    allowed.produce(topic, value=b"x", on_delivery=lambda e, m: results.append(e))
    allowed.flush(10)
    assert results == [None]


def test_lab_status_json_reports_regions_and_running_replication(lab):
    def status_once_running() -> dict | None:
        result = subprocess.run([sys.executable, "-m", "baton", "lab", "status", "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        # An earlier test's topics make MM2 reconfigure its tasks (refreshed every 1 s): a task
        # may be restarting for a moment. RUNNING must come back by itself.
        return status if status["replication"]["state"] == "RUNNING" else None

    status = wait_until(status_once_running, 60, "lab status to report replication RUNNING")
    for region in ("east", "west"):
        assert status["regions"][region]["up"] is True
        assert status["regions"][region]["bootstrap"].startswith("127.0.0.1:")
    assert status["replication"]["engine"] == "mm2"
    assert status["replication"]["state"] == "RUNNING"
    # Split ownership: each domain replicates from its own owner, on its own connectors.
    assert {name: (flow["flow"], flow["state"]) for name, flow in status["replication"]["domains"].items()} \
        == {"orders": ("east->west", "RUNNING"), "payments": ("west->east", "RUNNING")}
    assert status["config"].endswith("topology.yaml")
    check = subprocess.run([sys.executable, "-m", "baton", "config", "check", "--config", status["config"]],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "domain orders" in check.stdout  # the lab file's default_domain
    payments = subprocess.run([sys.executable, "-m", "baton", "config", "check", "--config", status["config"],
                               "--domain", "payments"], capture_output=True, text=True, timeout=60)
    assert payments.returncode == 0, payments.stderr
    assert "domain payments" in payments.stdout and "owner west" in payments.stdout


def test_up_is_idempotent_and_reuses_running_processes(lab):
    before = {name: process.pid() for name, process in lab.processes.items()}
    assert all(before.values())
    lab.up()
    assert {name: process.pid() for name, process in lab.processes.items()} == before
