"""A planned failover's write outage does not depend on the approver: the one decision is taken
before the fence, and a switch condition that fails inside the fence returns to safety without
a pause. Real lab, real Prefect server, the CLI as an operator starts it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from baton.audit import AuditStore
from baton.authority import authority_store, initialize_authority
from baton.authority.keeper import LeaseKeeper
from baton.client import GuardedProducer
from baton.errors import WriteRefused
from baton.kafka.fencing import present_bindings
from baton.replication import engine_for
from baton.settings import load_topology
from tests.conftest import wait_until
from tests.integration.runbook_support import (
    commit,
    make_domain,
    produce,
    produce_error,
    restore_lab,
    resume,
    wait_mirrored,
    wait_paused_at,
)
from tests.integration.test_runbooks import authority_of, latest_artifacts, start_cli_failover

pytestmark = pytest.mark.integration

APPROVAL_DELAY = 25.0  # the approver reads the request and answers this much later


@pytest.fixture
def planned_domain(topology, tmp_path, prefect_api):
    """A private domain (3 partitions, lease 3 s) with a lease keeper; the lab restored after."""
    path = make_domain(topology, tmp_path)
    t = load_topology(path)
    store = authority_store(t, AuditStore.for_topology(t))
    initialize_authority(t, store=store)
    keeper = LeaseKeeper(t, store, interval=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stop,), daemon=True)
    thread.start()
    yield path, t
    stop.set()
    thread.join(timeout=15)
    keeper.close()
    restore_lab(t)


def seed(t):
    topic = t.domain.topics[0]
    produce(t, "east", topic, 120, 3, "east")
    for group in t.domain.consumer_groups:
        commit(t, "east", group, topic, {0: 10, 1: 20, 2: 30})
    wait_mirrored(t, topic, 120)
    return topic


class WriteLoop:
    """A guarded producer writing every 50 ms; keeps the time of every acknowledged record."""

    def __init__(self, t, topic: str):
        self.producer = GuardedProducer(t, poll_interval=0.1)
        self.topic, self.acked, self.refused = topic, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                grant = self.producer.produce(
                    self.topic, value=b"w",
                    on_delivery=lambda e, m, s=sent: None if e else self.acked.append((s, m.topic())))
                del grant
            except WriteRefused:
                self.refused += 1
            self.producer.poll(0)
            time.sleep(0.05)

    def regions_seen(self) -> int:
        return len(self.acked)

    def stop(self) -> float:
        """Stop; the longest time between two records that were both written (the write gap)."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.producer.close(10)
        times = sorted(s for s, _ in self.acked)
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def approve(run_id: str, approver: str = "alice") -> None:
    resume(run_id, decision="approve", reason="planned maintenance of east", approver=approver)


def run_view(t):
    store = AuditStore.for_topology(t)
    return store.run(store.runs(t.domain.name)[0].id)


def test_planned_write_gap_does_not_include_the_approvers_delay(planned_domain):
    path, t = planned_domain
    topic = seed(t)
    writes = WriteLoop(t, topic)
    process = start_cli_failover(path)
    try:
        wait_until(lambda: len(writes.acked) >= 5, 30, "the guarded producer writing on east")
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        asked = time.monotonic()
        # While the person takes their time, nothing is fenced: producers keep writing on east.
        before_answer = len(writes.acked)
        time.sleep(APPROVAL_DELAY - (time.monotonic() - asked))
        assert len(writes.acked) > before_answer + 100
        assert authority_of(t).state.value == "ACTIVE" and present_bindings(t, "east") == []
        approve(run)
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
        wait_until(lambda: any(s > asked + APPROVAL_DELAY for s, _ in writes.acked[-5:]), 30,
                   "records acknowledged after the switch")
    finally:
        process.kill()
        gap = writes.stop()
    summary = json.loads(stdout)
    assert summary["status"] == "succeeded" and summary["owner_after"] == "west"
    # Writes resumed on west: the outage is the automated fenced window, not the approval delay.
    assert gap < APPROVAL_DELAY / 3, f"write gap {gap:.1f} s"
    view = run_view(t)
    assert [(a.gate, a.decision) for a in view.approvals] == [("approve-failover", "approved")]
    conditions = json.loads(next(s.evidence for s in view.steps if s.name == "check_switch_conditions"))
    assert conditions["failed"] == [] and len(conditions["conditions"]) == 4
    stop = json.loads(next(s.evidence for s in view.steps if s.name == "stop_primary_producers"))
    assert stop["fence_proof"]["acl_read_back"] and stop["fence_proof"]["end_offset_reads"] >= 2


def test_a_condition_failing_inside_the_fence_returns_to_safety_without_a_pause(planned_domain):
    from confluent_kafka import Consumer

    path, t = planned_domain
    topic = seed(t)
    group = t.domain.consumer_groups[1]
    # Group b is still consuming on east: it cannot be translated exactly (its position moves).
    consumer = Consumer(t.regions["east"].client_config("admin")
                        | {"group.id": group, "enable.auto.commit": False, "session.timeout.ms": 45000})
    consumer.subscribe([topic])
    wait_until(lambda: consumer.poll(0.2) is not None or consumer.assignment(), 60,
               "the consumer to join its group on east")
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        approve(run)
        _, stderr = process.communicate(timeout=180)  # nobody is asked again
    finally:
        process.kill()
        consumer.close()
    assert process.returncode == 1
    assert "switch condition failed: every group translated exactly" in stderr
    assert group in stderr
    # Back to the last safe state: east owns writes again (at a new epoch), unfenced.
    authority = authority_of(t)
    assert (authority.owner, authority.state.value, authority.epoch) == ("east", "ACTIVE", 3)
    assert present_bindings(t, "east") == [] and produce_error(t, "east", topic) is None
    view = run_view(t)
    assert view.status == "failed"
    assert [(a.gate, a.decision) for a in view.approvals] == [("approve-failover", "approved")]
    names = [s.name for s in view.steps]
    assert "switch_authority" not in names and names[-1] == "compensate"
    compensation = json.loads(next(s.evidence for s in view.steps if s.name == "compensate"))
    assert "unfenced east" in compensation["actions"]
    # The stop of replication requested once the mirror was verified current settled before the
    # compensation restarted replication, so no late stop can land after the restart: RUNNING at
    # every sample for 3 s.
    currency = json.loads(next(s.evidence for s in view.steps if s.name == "verify_secondary_currency"))
    assert currency["replication_stop"].startswith("requested")
    assert compensation["stop_in_flight"]["stop_in_flight"] == "settled"
    assert compensation["stop_in_flight"]["status"]["state"] == "STOPPED"
    assert "restarted replication east -> west" in compensation["actions"]
    engine = engine_for(t)
    samples = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        samples.append(engine.status("east", "west").state)
        time.sleep(0.25)
    assert len(samples) >= 5 and set(samples) == {"RUNNING"}, samples


def test_pause_form_read_through_the_api_shows_the_evidence_and_only_the_decision(planned_domain):
    import asyncio

    from prefect.client.orchestration import get_client

    path, t = planned_domain
    seed(t)
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)

        async def read():
            async with get_client() as client:
                flow_run = await client.read_flow_run(run)
                keyset = flow_run.state.state_details.run_input_keyset
                return (await client.read_flow_run_input(run, keyset["schema"]),
                        await client.read_flow_run_input(run, keyset["description"]))

        schema, description = asyncio.run(read())
        schema = json.loads(schema)
        assert set(schema["properties"]) == {"decision", "reason"}
        assert schema["required"] == ["decision"] and "default" not in schema["properties"]["decision"]
        assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
        for shown in ("Gate `approve-failover`", f"`{t.domain.name}`", "planned authority change",
                      "east -&gt; west", "**lag**: 0 records", "records at risk", "readiness",
                      "translations", "every group translated exactly", "**Rejecting**"):
            assert shown in description, shown
        assert resume(run, decision="reject") == "SetStateStatus.REJECT"  # a reason is required
        assert resume(run, decision="reject", reason="not tonight") == "SetStateStatus.ACCEPT"
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1 and "rejected by prefect-ui user: not tonight" in stderr
    approval = run_view(t).approvals[0]
    assert (approval.channel, approval.identity_verified) == ("prefect-ui", False)
    # The run's summary artifact says who decided the gate, through which channel.
    (summary_md,) = latest_artifacts("failover-summary")
    assert "| approve-failover | rejected | prefect-ui user | prefect-ui | unverified |" in summary_md.data
