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
    wait_checkpointed,
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
    command = [sys.executable, "-m", "baton", "reprotect", "--yes", "--json", "--config", str(path),
               "--domain", t.domain.name]
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

    second = reprotect(config=str(path), domain=t.domain.name, auto_approve=True)
    assert second["status"] == "succeeded"
    again = {s.name: json.loads(s.evidence) for s in store.run(second["run_id"]).steps}
    assert again["handle_divergent_tail"]["count"] == 0  # handled once, by the first run
    assert again["start_reverse_replication"]["state_before"] == "RUNNING"
    return first["run_id"]


POLICIES = ("republish", "quarantine", "discard")


def test_unplanned_failover_then_failback_accounts_for_every_divergent_record(lab, tmp_path, prefect_api):
    """One outage of east for three domains, one per divergent-tail policy: each fails over
    unplanned with a tail only east holds, then fails back; quarantine goes through `baton
    reprotect` first. The domains have their own MM2 connectors (one domain's failback restarts
    only its own copying), so one kill and one restart of east serve the three."""
    from flows.failover import failover
    from tests.integration.test_evacuation import east_domains_file, remove_domains

    path, made, prefix = east_domains_file(lab, tmp_path, len(POLICIES), tag="div", quiesce_seconds=1,
                                           lease_ttl_seconds=3, step_timeout_seconds=90,
                                           gate_timeout_seconds=120)
    domains = dict(zip(POLICIES, made, strict=True))
    try:
        for t in domains.values():
            topic, (group, other) = t.domain.topics[0], t.domain.consumer_groups
            produce(t, "east", topic, 120, 3, "east")
            commit(t, "east", group, topic, {0: 10, 1: 20, 2: 30})
            commit(t, "east", other, topic, {0: 40, 1: 40, 2: 40})
        for t in domains.values():
            wait_mirrored(t, t.domain.topics[0], 120)
            wait_checkpointed(t)
        # Replication stalls, east keeps accepting writes, then east dies: those writes diverge.
        for t in domains.values():
            engine_for(t).stop("east", "west")
        written = {policy: produce(t, "east", t.domain.topics[0], 25, 3, "tail")
                   for policy, t in domains.items()}
        lab.fault("kill", "east")
        divergent = {}
        for policy, t in domains.items():
            # Connect stops a task asynchronously: a record it had already fetched may still reach
            # the mirror. Only what the mirror does not hold diverges.
            copied = {m.value() for m in read_all(t, "west", f"east.{t.domain.topics[0]}")}
            divergent[policy] = [r for r in written[policy] if r[2] not in copied]
            assert divergent[policy], f"{policy}: the tail must diverge (replication stopped before it)"

        for policy, t in domains.items():
            summary = failover(config=path, domain=t.domain.name, unplanned=True,
                               reason="east killed by the test", auto_approve=True)
            assert summary["status"] == "succeeded" and summary["owner_after"] == "west", policy
            assert AuditStore.for_topology(t).run(summary["run_id"]).run.planned is False
            produce(t, "west", t.domain.topics[0], 30, 3, "west")  # the west era

        # `baton reprotect` handles the quarantine domain's tail before any failback; it restarts east.
        t = domains["quarantine"]
        tail_run = reprotect_once_east_answers(lab, t, path, AuditStore.for_topology(t), t.domain.topics[0])
        for policy in POLICIES:
            fail_back_and_account(domains[policy], path, policy, divergent[policy],
                                  tail_run if policy == "quarantine" else None)
    finally:
        if lab.status()["regions"]["east"]["process"] != "running":
            lab.fault("restart", "east")
        remove_domains(made, [prefix])
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")


def fail_back_and_account(t, path, policy: str, divergent: list, tail_run: str | None) -> None:
    """The domain's failback with `policy`: every divergent record listed and handled as the
    policy says (read back), east writable again and west fenced."""
    from flows.failback import failback

    topic = t.domain.topics[0]
    store = AuditStore.for_topology(t)
    summary = failback(config=str(path), domain=t.domain.name, auto_approve=True, divergent_policy=policy)
    assert summary["status"] == "succeeded" and summary["owner_after"] == "east", policy

    view = store.run(tail_run or summary["run_id"])
    evidence = {s.name: s.evidence for s in view.steps}
    if tail_run:  # the failback found nothing new: the reprotected tail is not handled twice
        again = {s.name: json.loads(s.evidence) for s in store.run(summary["run_id"]).steps}
        assert (again["find_divergent_tail"]["count"], again["find_divergent_tail"]["handled_earlier"]) \
            == (0, len(divergent))
        assert again["start_reverse_replication"]["state_before"] == "RUNNING"

    found = json.loads(evidence["find_divergent_tail"])
    listed = {(r["partition"], r["offset"]) for r in found["records"]}
    assert listed == {(p, o) for p, o, _ in divergent}, policy  # every divergent record, nothing else
    handled = json.loads(evidence["handle_divergent_tail"])
    assert handled["policy"] == policy and handled["count"] == len(divergent)
    tail_values = sorted(v for _, _, v in divergent)
    if policy == "republish":
        copies = [m for m in read_all(t, "west", topic) if ORIGIN_HEADER in dict(m.headers() or [])]
        assert sorted(m.value() for m in copies) == tail_values
    elif policy == "quarantine":
        copies = read_all(t, "east", f"{topic}.divergent")
        assert sorted(m.value() for m in copies) == tail_values
    else:
        assert [r["fate"] for r in handled["records"]] == ["discarded"] * len(divergent)
        assert any(a.gate == "approve-discard" and a.decision == "approved" for a in view.approvals)
    assert produce_error(t, "east", topic) is None
    error = produce_error(t, "west", topic)
    assert error is not None and error.code() != KafkaError.NO_ERROR, policy


def _failover_in_thread(path):
    """An unplanned failover of the domain in a thread (its gates answered through the Prefect
    API); returns (thread, outcome) where outcome gets "summary" or "error"."""
    import contextvars
    import threading

    from flows.failover import failover

    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = failover(config=str(path), unplanned=True, reason="east hung by the test")
        except BaseException as e:  # noqa: BLE001 - reported to the test
            outcome["error"] = e

    # Prefect's settings (the test server's URL) live in context variables: carry them over.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    return thread, outcome


def test_unplanned_failover_pauses_for_a_group_it_cannot_translate_and_applies_the_choice(
        lab, topology, tmp_path, prefect_api):
    """Owner dead, one group checkpointed by MM2 and one never: the run names the refused
    group-partitions at approve-translation-resolutions; a rejection returns to the last safe state with
    nothing applied; `earliest` is applied (read back) as the mirror's log start."""
    import json

    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from baton.authority import State, authority_store
    from baton.kafka.admin import admin_client
    from baton.kafka.reading import watermarks
    from flows.runner import escape_markdown
    from tests.integration.runbook_support import committed, resume, wait_paused_at

    path = make_domain(topology, tmp_path, partitions=2, lease_ttl_seconds=1)
    t = load_topology(path)
    topic, (translated, refused) = t.domain.topics[0], t.domain.consumer_groups
    mirror = t.replication.remote_topic(topic, "east")
    produce(t, "east", topic, 40, 2, "east")
    commit(t, "east", translated, topic, {0: 10, 1: 12})
    wait_mirrored(t, topic, 40)
    engine = engine_for(t)
    wait_until(lambda: len([k for k in engine.checkpoints("east", "west").items if k[0] == translated]) == 2,
               60, "MM2 checkpoints for the translated group")
    # The mirror's retention moved partition 0's log start: `earliest` is a measured offset, not 0.
    admin = AdminClient(t.regions["west"].client_config("admin"))
    for future in admin.delete_records([TopicPartition(mirror, 0, 5)]).values():
        future.result()
    store = AuditStore.for_topology(t)
    lab.fault("hang", "east")
    try:
        # 1. rejected at the resolution gate: back to the last safe state, nothing applied on west
        thread, outcome = _failover_in_thread(path)
        resume(wait_paused_at("failover", "approve-failover", config=path), decision="approve")
        run = wait_paused_at("failover", "approve-translation-resolutions", timeout=60, config=path)
        run_id = store.runs(t.domain.name)[0].id
        shown = json.loads(next(s.evidence for s in store.run(run_id).steps
                                if s.name == "translate_consumer_offsets"))
        assert sorted(shown["refused"]) == sorted(
            f"{refused} {mirror}[{p}] no-checkpoint: " + next(
                e["note"] for e in shown["translation"]["entries"]
                if e["group"] == refused and e["partition"] == p) for p in (0, 1))
        assert shown["resolution_options"] == {refused: ["earliest", "latest"]}
        schema, description = _pause_form(run)  # what the approver reads and answers in the UI
        assert set(schema["properties"]) == {"decision", "reason", "choices"}
        for line in (f"{refused} {mirror}[0] no-checkpoint", f"{refused} {mirror}[1] no-checkpoint",
                     f"{refused}: earliest, latest"):
            assert escape_markdown(line) in description, line
        lab.fault("resume", "east")  # the owner is back while the gate waits: rejected
        resume(run, decision="reject", reason="east is back")
        thread.join(60)
        assert "rejected" in str(outcome.get("error")), outcome
        view = store.run(run_id)
        assert view.status == "failed"
        assert [a.decision for a in view.approvals
                if a.gate == "approve-translation-resolutions"] == ["rejected"]
        assert "apply_translation_resolutions" not in {s.name for s in view.steps}
        authority = authority_store(t, store).current(t.domain.name)
        assert (authority.owner, authority.state, authority.epoch) == ("east", State.ACTIVE, 3)
        assert committed(t, "west", translated) == {} and committed(t, "west", refused) == {}
        lab.fault("hang", "east")

        # 2. approved with `earliest` for the refused group: applied and read back
        thread, outcome = _failover_in_thread(path)
        resume(wait_paused_at("failover", "approve-failover", config=path), decision="approve")
        run = wait_paused_at("failover", "approve-translation-resolutions", timeout=60, config=path)
        resume(run, decision="approve", choices=f"{refused}=checkpoint")  # not offered: asked again
        run = wait_paused_at("failover", "approve-translation-resolutions", timeout=30, config=path)
        resume(run, decision="approve", approver="alice", choices=f"{refused}=earliest")
        run = wait_paused_at("failover", "approve-switch", timeout=60, config=path)
        run_id = store.runs(t.domain.name)[0].id
        marks = watermarks(admin_client(t.regions["west"]), [(mirror, 0), (mirror, 1)], "west")
        starts = {p: marks[(mirror, p)].start for p in (0, 1)}
        assert starts[0] == 5
        assert committed(t, "west", refused) == {(mirror, 0): starts[0], (mirror, 1): starts[1]}
        applied = json.loads(next(s.evidence for s in store.run(run_id).steps
                                  if s.name == "apply_translation_resolutions"))
        assert {(e["partition"], e["method"], e["translated_offset"], e["chosen_by"])
                for e in applied["resolved"]} == {
            (p, "operator-resolution:earliest", starts[p], "alice (prefect-ui, unverified)") for p in (0, 1)}
        assert committed(t, "west", translated) == {
            (mirror, e["partition"]): e["translated_offset"] for e in applied["entries"]
            if e["group"] == translated}
        # the switch itself is what every unplanned test proves; here it is declined (owner back)
        lab.fault("resume", "east")
        resume(run, decision="reject", reason="east is back")
        thread.join(60)
        assert "rejected" in str(outcome.get("error")), outcome
    finally:
        lab.fault("resume", "east")
        wait_until(lambda: _restored(t), 60, "east to answer after it was resumed")


def _pause_form(flow_run_id: str) -> tuple[dict, str]:
    import asyncio
    import json

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            keyset = (await client.read_flow_run(flow_run_id)).state.state_details.run_input_keyset
            return (await client.read_flow_run_input(flow_run_id, keyset["schema"]),
                    await client.read_flow_run_input(flow_run_id, keyset["description"]))

    schema, description = asyncio.run(read())
    return json.loads(schema), json.loads(description)


def _restored(t) -> bool:
    from baton.errors import BatonError

    try:
        restore_lab(t)
    except BatonError:  # a resumed broker may need a moment before its controller answers
        return False
    return True
