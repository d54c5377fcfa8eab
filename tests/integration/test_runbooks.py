"""Failover and failback runbooks on the real lab, executed by a real Prefect server.

Each test uses its own domain (topic, groups, audit DB) and leaves the shared lab as it found
it: nothing fenced, replication east -> west running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import KafkaError

from baton.audit import AuditStore
from baton.authority import authority_store
from baton.kafka.fencing import present_bindings
from baton.replication import engine_for
from baton.settings import load_topology
from tests.conftest import wait_until
from tests.integration.runbook_support import (
    DomainTraffic,
    commit,
    committed,
    lab_domain,
    make_domain,
    produce,
    produce_error,
    read_from,
    restore_lab,
    resume,
    wait_holds_acked,
    wait_mirrored,
    wait_mm2_steady,
    wait_paused_at,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def domain(topology, tmp_path, prefect_api):
    """Factory for a private domain's topology file; the lab is restored afterwards."""
    created = []

    def create(**thresholds):
        path = make_domain(topology, tmp_path, **thresholds)
        created.append(path)
        return path

    yield create
    for path in created:
        restore_lab(load_topology(path))


def seed(t, partitions=3):
    """300 records on east; group a has processed some of them, group b none."""
    topic = t.domain.topics[0]
    acked = produce(t, "east", topic, 300, partitions, "east")
    group_a, group_b = t.domain.consumer_groups
    commit(t, "east", group_a, topic, {0: 40, 1: 17, 2: 100})
    commit(t, "east", group_b, topic, {0: 0, 1: 0, 2: 0})
    wait_mirrored(t, topic, 300)
    return topic, acked


def baton(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def authority_of(t):
    return authority_store(t, AuditStore.for_topology(t)).current(t.domain.name)


def latest_artifacts(*keys):
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_latest_artifacts(limit=50)

    latest = {a.key: a for a in asyncio.run(read())}
    return [latest[key] for key in keys]


def test_planned_failover_then_failback_moves_authority_and_consumers_exactly(lab, domain):
    from flows.failback import failback
    from flows.failover import failover

    path = domain()
    t = load_topology(path)
    topic, _ = seed(t)
    group_a = t.domain.consumer_groups[0]
    before = committed(t, "east", group_a)
    payments = lab_domain(lab, "payments")

    # The domain rides on the lab's orders connectors: its failover switches orders' replication,
    # while payments (owned by west, its own connectors) keeps writing and replicating.
    wait_mm2_steady(payments)
    with DomainTraffic(payments, "west") as traffic:
        wait_until(lambda: traffic.acked, 15, "a first payments write acknowledged on west")
        started = time.monotonic()
        summary = failover(config=str(path), auto_approve=True)
        ended = time.monotonic()
        wait_until(lambda: traffic.acked_between(ended, time.monotonic()), 15,
                   "a payments write acknowledged after the switch")

    assert summary["status"] == "succeeded"
    # Measured, not assumed: every payments write was acknowledged, writes kept being acknowledged
    # throughout the orders switch, and payments' west -> east flow read RUNNING at every sample.
    assert traffic.errors == []
    assert traffic.acked_between(started, ended) > 0
    assert traffic.states_between(started, ended) == {"RUNNING"}, \
        traffic.not_running_between(started, ended)
    assert len([at for at, _ in traffic.states if started <= at <= ended]) >= 4
    assert engine_for(payments).status("west", "east").state == "RUNNING"
    wait_holds_acked(payments, "west", traffic.acked)
    assert (summary["owner_before"], summary["owner_after"]) == ("east", "west")
    authority = authority_of(t)
    assert (authority.owner, authority.state.value, authority.epoch) == ("west", "ACTIVE", 3)
    # The old owner refuses the producer principal; the new owner accepts it.
    error = produce_error(t, "east", topic)
    assert error is not None and error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                                  KafkaError.CLUSTER_AUTHORIZATION_FAILED)
    assert produce_error(t, "west", topic) is None
    # Exactness: from the translated positions, west delivers exactly what the group had not
    # processed on east: no record missing, none twice.
    mirror = f"east.{topic}"
    translated = committed(t, "west", group_a)
    starts_west = {p: translated[(mirror, p)] for p in range(3)}
    starts_east = {p: before[(topic, p)] for p in range(3)}
    assert read_from(t, "west", mirror, starts_west) == read_from(t, "east", topic, starts_east)
    # Translated read-only before the fence; inside it, entries still verified were carried (their
    # positions are among those the exactness check above consumed from).
    steps = AuditStore.for_topology(t).run(summary["run_id"]).steps
    evidence = {s.name: json.loads(s.evidence) for s in steps}
    prepared = evidence["check_lag"]["translation_before_fence"]
    carried = evidence["translate_consumer_offsets"]["verified_before_fence_and_carried"]
    assert prepared["prepared"] and 1 <= carried <= prepared["verified_from_offset_syncs"]
    assert engine_for(t).status("east", "west").state == "STOPPED"
    # The switch ended once authority moved, with the stop of east -> west only requested;
    # reconcile read the connectors that copy data back STOPPED as a postcondition, before the
    # reprotect steps; the heartbeat and checkpoint connectors (no group-offset sync) ran on.
    assert "replication_stopped" not in evidence["switch_authority"]
    stopped = evidence["reconcile"]["replication_stopped"]
    states = {c["name"].rsplit("-", 1)[-1]: (c["state"], c["writes_data"])
              for c in stopped["status"]["components"]}
    assert stopped["stopped"] and states == {"source": ("STOPPED", True), "checkpoint": ("RUNNING", False),
                                             "heartbeat": ("RUNNING", False)}
    # East's divergent tail is empty, from the currency measurement of the fenced east, every
    # offset of both sides re-read unchanged after the stop.
    tail = evidence["find_divergent_tail"]
    assert tail["count"] == 0 and tail["lag"].startswith("verify_secondary_currency's measurement")
    # The run published its Prefect artifacts: a Markdown summary and the translated offsets.
    summary_md, offsets_table = latest_artifacts("failover-summary", "failover-offsets")
    assert summary["run_id"] in summary_md.description and "switch_authority" in summary_md.data
    rows = json.loads(offsets_table.data) if isinstance(offsets_table.data, str) else offsets_table.data
    assert {(r["group"], r["partition"]) for r in rows} >= {(group_a, p) for p in range(3)}

    # The planned run reprotected east itself: replication west -> east runs and east was current.
    assert [(s["name"], s["status"]) for s in summary["steps"]][-1] == ("verify_standby_current", "succeeded")
    assert engine_for(t).status("west", "east").state == "RUNNING"

    # West era: the app writes on west; east's mirror holds it within 30 s, without a failback.
    produce(t, "west", topic, 60, 3, "west")
    wait_mirrored(t, topic, 60, timeout=30, source="west")
    everything = {0: 0, 1: 0, 2: 0}
    assert read_from(t, "east", f"west.{topic}", everything) == read_from(t, "west", topic, everything)
    lag = json.loads(baton("lag", "--json", "--config", str(path)).stdout)  # owner now by default
    assert (lag["owner"], lag["secondary"], lag["records_at_risk"]) == ("west", "east", 0)
    # Then authority goes home; the failback finds its reverse replication running already.
    summary = failback(config=str(path), auto_approve=True, divergent_policy="quarantine")

    assert summary["status"] == "succeeded"
    assert summary["owner_after"] == "east"
    authority = authority_of(t)
    assert (authority.owner, authority.state.value, authority.epoch) == ("east", "ACTIVE", 5)
    assert produce_error(t, "east", topic) is None
    error = produce_error(t, "west", topic)
    assert error is not None and error.code() != KafkaError.NO_ERROR
    # The group's position went west and back to the very same offsets.
    assert {k: v for k, v in committed(t, "east", group_a).items() if k[0] == topic} == before
    # West's own writes reached east (the reverse mirror) before authority moved back.
    assert sum(len(v) for v in read_from(t, "east", f"west.{topic}", {0: 0, 1: 0, 2: 0}).values()) >= 60
    assert engine_for(t).status("east", "west").state == "RUNNING"
    assert engine_for(t).status("west", "east").state == "STOPPED"
    store = AuditStore.for_topology(t)
    assert store.verify().ok
    steps = {s.name: json.loads(s.evidence) for s in store.run(summary["run_id"]).steps}
    assert list(steps)[-1] == "reconcile" and steps["find_divergent_tail"]["count"] == 0
    assert steps["find_divergent_tail"]["lag"] == "measured now"  # no fenced measurement to reuse
    assert steps["reconcile"]["replication_stopped"]["stopped"]
    assert steps["start_reverse_replication"]["state_before"] == "RUNNING"


def start_cli_failover(path, *extra):
    env = os.environ | {"BATON_CONFIG": str(path)}
    return subprocess.Popen([sys.executable, "-m", "baton", "failover", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def test_rejected_failover_changes_nothing_and_needs_a_reason(domain):
    path = domain()
    t = load_topology(path)
    topic, _ = seed(t)
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        # A planned run asks before the fence: while it waits, east still accepts writes.
        assert authority_of(t).state.value == "ACTIVE" and produce_error(t, "east", topic) is None
        # A second run of the same domain is refused while this one holds the lock.
        second = baton("failover", "--yes", "--config", str(path))
        assert second.returncode == 1 and "locked by run" in second.stderr
        # The form refuses a rejection without a reason (the server checks the form's schema).
        assert resume(run, decision="reject", approver="bob") == "SetStateStatus.REJECT"
        assert resume(run, decision="reject", approver="bob", reason="west looks wrong") == \
            "SetStateStatus.ACCEPT"
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1
    assert "rejected by bob: west looks wrong" in stderr
    authority = authority_of(t)
    assert (authority.owner, authority.state.value, authority.epoch) == ("east", "ACTIVE", 1)
    assert produce_error(t, "east", topic) is None
    assert present_bindings(t, "east") == []
    assert engine_for(t).status("east", "west").state == "RUNNING"
    store = AuditStore.for_topology(t)
    view = store.run(store.runs(t.domain.name)[0].id)
    assert view.status == "failed"
    assert [(a.gate, a.decision, a.approver, a.channel, a.identity_verified) for a in view.approvals] == [
        ("approve-failover", "rejected", "bob", "prefect-ui", False)]
    assert "stop_primary_producers" not in [s.name for s in view.steps]


def test_gate_timeout_compensates_and_fails_the_run(domain):
    path = domain(gate_timeout_seconds=8)
    t = load_topology(path)
    topic, _ = seed(t)
    process = start_cli_failover(path)
    try:
        wait_paused_at("failover", "approve-failover", config=path, process=process)
        _, stderr = process.communicate(timeout=120)  # nobody answers
    finally:
        process.kill()
    assert process.returncode == 1 and "timed out" in stderr
    authority = authority_of(t)
    assert (authority.owner, authority.state.value) == ("east", "ACTIVE")
    assert produce_error(t, "east", topic) is None
    view = AuditStore.for_topology(t).run(AuditStore.for_topology(t).runs(t.domain.name)[0].id)
    assert view.approvals[-1].decision == "timed_out"
    assert any(s.name == "compensate" and s.status == "succeeded" for s in view.steps)


def test_crashed_flow_resumes_without_repeating_irreversible_steps(domain):
    # A long fence proof keeps the run inside its fenced window long enough to kill it there.
    path = domain(fence_settle_seconds=6, max_fenced_seconds=120)
    t = load_topology(path)
    seed(t)
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        resume(run, decision="approve", approver="alice")
        wait_until(lambda: authority_of(t).state.value == "FENCED", 60, "the fence", interval=0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the flow process dies mid-run, fenced
        process.wait()
    store = AuditStore.for_topology(t)
    run_id = store.runs(t.domain.name)[0].id
    assert store.run(run_id).status == "running" and authority_of(t).state.value == "FENCED"

    result = baton("failover", "--yes", "--json", "--resume", run_id, "--config", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["owner_after"] == "west"
    rows = store.run(run_id).steps
    assert [s.status for s in rows if s.name == "switch_authority"] == ["succeeded"]
    assert [s.status for s in rows if s.name == "stop_primary_producers"].count("succeeded") == 1
    states = [e.state for e in authority_store(t, store).history(t.domain.name)]
    assert states == ["ACTIVE", "FENCED", "ACTIVE"]  # fenced once, not again
    # The run can be read back from the audit database by the CLI.
    listed = json.loads(baton("runs", "--json", "--config", str(path)).stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "succeeded")]
    report = baton("report", run_id, "--format", "md", "--config", str(path))
    assert report.returncode == 0 and "| stop_primary_producers | succeeded |" in report.stdout
    assert "| approve-failover | approved | alice | prefect-ui |" in report.stdout


def test_failover_refuses_when_replication_is_down_and_changes_nothing(lab, domain):
    path = domain()
    t = load_topology(path)
    seed(t)
    before = snapshot(t)
    lab.fault("stop", "replication")
    try:
        result = baton("failover", "--yes", "--config", str(path))
    finally:
        lab.fault("start", "replication")
    assert result.returncode == 1
    assert "refusing to fail over: replication east -> west is STOPPED" in result.stderr
    assert "--override-lag" in result.stderr
    after = snapshot(t)
    assert after["acls"] == before["acls"] and after["groups"] == before["groups"]
    assert after["authority"]["owner"] == "east" and after["authority"]["state"] == "ACTIVE"
    view = AuditStore.for_topology(t).run(AuditStore.for_topology(t).runs(t.domain.name)[0].id)
    assert view.status == "failed" and [s.status for s in view.steps if s.name == "check_lag"] == ["failed"]


def snapshot(t):
    groups = {g: {r: committed(t, r, g) for r in t.regions} for g in t.domain.consumer_groups}
    authority = authority_of(t)
    return {"authority": authority.model_dump() if authority else None,
            "acls": {r: sorted(map(str, present_bindings(t, r))) for r in t.regions},
            "groups": groups, "replication": engine_for(t).status("east", "west").state}


def test_plan_changes_nothing(domain):
    path = domain()
    t = load_topology(path)
    seed(t)
    # The state the plan must leave alone, settled first: the groups seed() committed (and those
    # the previous test's cleanup deleted) restart MM2's checkpoint task up to a second later,
    # which reads DEGRADED (RUNNING before the plan, DEGRADED after it: seen under load).
    wait_mm2_steady(t)
    before = snapshot(t)
    result = baton("failover", "--plan", "--json", "--config", str(path))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    first_steps = [s["step"] for s in plan["steps"]][:3]
    assert first_steps == ["check_lag", "approve-failover", "stop_primary_producers"]
    assert plan["measured"]["lag"].startswith("0 records")
    assert baton("failback", "--plan", "--config", str(path)).returncode == 0
    assert snapshot(t) == before
    assert AuditStore.for_topology(t).runs(t.domain.name) == []
