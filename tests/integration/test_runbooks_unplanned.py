"""Unplanned failover with east killed, then failback with its divergent tail, for each policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from confluent_kafka import KafkaError

from baton.audit import AuditStore
from baton.kafka.copying import ORIGIN_HEADER
from baton.replication import engine_for
from baton.settings import load_topology
from tests.conftest import wait_until
from tests.integration.runbook_support import (
    commit,
    make_domain,
    produce,
    produce_error,
    restore_lab,
    wait_mirrored,
)

pytestmark = pytest.mark.integration


def read_all(t, region, topic, partitions=3):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(t.regions[region].client_config("admin")
                        | {"group.id": "baton-t-reader", "enable.auto.commit": False})
    records = []
    try:
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            while True:
                message = consumer.poll(5)
                assert message is not None and not message.error(), f"reading {topic}[{p}]"
                records.append(message)
                if message.offset() >= high - 1:
                    break
    finally:
        consumer.close()
    return records


def reprotect_once_east_answers(lab, t, path, store, topic) -> str:
    """`baton reprotect` refuses while east is dead (nothing recorded), then, once east is back,
    protects it: the tail quarantined, west -> east running, east current. A second run is
    harmless. Returns the first reprotect's run id."""
    runs_before = len(store.runs(t.domain.name))
    command = [sys.executable, "-m", "baton", "reprotect", "--yes", "--json", "--config", str(path)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "east does not answer" in refused.stderr and "`baton ready`" in refused.stderr
    assert len(store.runs(t.domain.name)) == runs_before

    lab.fault("restart", "east")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)
    assert (first["status"], first["owner_after"], first["runbook"]) == ("succeeded", "west", "reprotect")
    assert engine_for(t).status("west", "east").state == "RUNNING"
    current = json.loads([s for s in store.run(first["run_id"]).steps
                          if s.name == "verify_standby_current"][0].evidence)
    assert current["standby"] == "east" and {p["lag_records_now"] for p in current["partitions"]} == {0}
    # The west era's 30 records are on east's mirror (read back, not taken from the evidence).
    assert len(read_all(t, "east", f"west.{topic}")) == len(read_all(t, "west", topic)) == 30

    from flows.reprotect import reprotect

    second = reprotect(config=str(path), auto_approve=True)
    assert second["status"] == "succeeded"
    again = {s.name: json.loads(s.evidence) for s in store.run(second["run_id"]).steps}
    assert again["handle_divergent_tail"]["count"] == 0  # handled once, by the first run
    assert again["start_reverse_replication"]["state_before"] == "RUNNING"
    return first["run_id"]


@pytest.mark.parametrize("policy", ["republish", "quarantine", "discard"])
def test_unplanned_failover_then_failback_accounts_for_every_divergent_record(
        lab, topology, tmp_path, prefect_api, policy):
    from flows.failback import failback
    from flows.failover import failover

    path = make_domain(topology, tmp_path)
    t = load_topology(path)
    topic = t.domain.topics[0]
    group = t.domain.consumer_groups[0]
    try:
        produce(t, "east", topic, 120, 3, "east")
        commit(t, "east", group, topic, {0: 10, 1: 20, 2: 30})
        commit(t, "east", t.domain.consumer_groups[1], topic, {0: 40, 1: 40, 2: 40})
        wait_mirrored(t, topic, 120)
        engine = engine_for(t)
        wait_until(lambda: len([k for k in engine.checkpoints("east", "west").items if k[0] == group]) == 3,
                   60, "MM2 checkpoints for the group")
        # Replication stalls, east keeps accepting writes, then east dies: those writes diverge.
        lab.fault("stop", "replication")
        divergent = produce(t, "east", topic, 25, 3, "tail")
        lab.fault("kill", "east")

        summary = failover(config=str(path), unplanned=True, reason="east killed by the test",
                           auto_approve=True)
        assert summary["status"] == "succeeded" and summary["owner_after"] == "west"
        store = AuditStore.for_topology(t)
        assert store.run(summary["run_id"]).run.planned is False
        produce(t, "west", topic, 30, 3, "west")  # the west era

        tail_run = None
        if policy == "quarantine":  # `baton reprotect` handles the tail before any failback
            tail_run = reprotect_once_east_answers(lab, t, path, store, topic)
        else:
            lab.fault("restart", "east")
        summary = failback(config=str(path), auto_approve=True, divergent_policy=policy)
        assert summary["status"] == "succeeded" and summary["owner_after"] == "east"

        view = store.run(tail_run or summary["run_id"])
        evidence = {s.name: s.evidence for s in view.steps}
        if tail_run:  # the failback found nothing new: the reprotected tail is not handled twice
            again = {s.name: json.loads(s.evidence) for s in store.run(summary["run_id"]).steps}
            assert (again["find_divergent_tail"]["count"], again["find_divergent_tail"]["handled_earlier"]) \
                == (0, 25)
            assert again["start_reverse_replication"]["state_before"] == "RUNNING"

        found = json.loads(evidence["find_divergent_tail"])
        listed = {(r["partition"], r["offset"]) for r in found["records"]}
        assert listed == {(p, o) for p, o, _ in divergent}  # every divergent record, nothing else
        handled = json.loads(evidence["handle_divergent_tail"])
        assert handled["policy"] == policy and handled["count"] == 25
        tail_values = sorted(v for _, _, v in divergent)
        if policy == "republish":
            copies = [m for m in read_all(t, "west", topic) if ORIGIN_HEADER in dict(m.headers() or [])]
            assert sorted(m.value() for m in copies) == tail_values
        elif policy == "quarantine":
            copies = read_all(t, "east", f"{topic}.divergent")
            assert sorted(m.value() for m in copies) == tail_values
        else:
            assert [r["fate"] for r in handled["records"]] == ["discarded"] * 25
            assert any(a.gate == "approve-discard" and a.decision == "approved" for a in view.approvals)
        assert produce_error(t, "east", topic) is None
        error = produce_error(t, "west", topic)
        assert error is not None and error.code() != KafkaError.NO_ERROR
    finally:
        if lab.status()["regions"]["east"]["process"] != "running":
            lab.fault("restart", "east")
        restore_lab(t)
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")
