"""Planned outage pieces on plain data: the scorecard's write outage, and the pause form."""

from __future__ import annotations

import pytest
from prefect.input.run_input import create_v2_schema
from prefect.utilities import schema_tools

from baton.drill.scorecard import write_outage
from flows.gates import decision_form
from runbooks import FAILOVER


def step(name, start, end):
    return {"name": name, "gate": name.startswith("approve-"), "seconds": end - start,
            "started_at": start, "ended_at": end}


def test_write_outage_counts_a_gate_wait_inside_the_fenced_window():
    old_order = [step("approve-failover", 0, 5), step("stop_primary_producers", 5, 8),
                 step("approve-switch", 9, 69), step("switch_authority", 69, 71)]
    outage = write_outage(old_order, write_gap=66.0)
    assert outage == {"fenced_window_seconds": 66, "gate_wait_in_fenced_window_seconds": 60,
                      "write_outage_seconds": 66.0, "automated_outage_seconds": 6.0}
    new_order = [step("approve-failover", 0, 60), step("stop_primary_producers", 60, 61),
                 step("switch_authority", 62, 62.5)]
    outage = write_outage(new_order, write_gap=1.8)
    assert outage["gate_wait_in_fenced_window_seconds"] == 0
    assert outage["write_outage_seconds"] == outage["automated_outage_seconds"] == 1.8


def form_schema(summary):
    form = decision_form(FAILOVER.step("approve-failover"), summary)
    return form, create_v2_schema(form.__name__, model_base=form)


SUMMARY = {"runbook": "failover", "domain": "orders", "gate": "approve-failover",
           "planned_change": "east -> west (epoch 4 -> 6)", "lag": "0 records, 0.0 s at risk",
           "switch_conditions": ["0 records at risk once fenced", "every group translated exactly"],
           "started_by": "carol", "reason": "<b>patch</b> [x](http://evil)"}


def test_pause_form_asks_only_for_the_decision_and_a_reason():
    _, schema = form_schema(SUMMARY)
    assert set(schema["properties"]) == {"decision", "reason"}
    assert schema["required"] == ["decision"]  # no default decision: nothing rejects by accident
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert "default" not in schema["properties"]["decision"]


@pytest.mark.parametrize(("answer", "valid"), [
    ({"decision": "approve"}, True),
    ({"decision": "reject", "reason": "west looks wrong"}, True),
    ({"decision": "reject"}, False),
    ({"decision": "reject", "reason": "   "}, False),
    ({"reason": "forgot to choose"}, False),
])
def test_the_schema_refuses_a_rejection_without_a_reason(answer, valid):
    _, schema = form_schema(SUMMARY)
    errors = schema_tools.validate(answer, schema, raise_on_error=False)
    assert (not errors) is valid


def test_pause_form_description_carries_the_evidence_escaped():
    form, _ = form_schema(SUMMARY)
    text = form._description
    assert "approve-failover" in text and "east -&gt; west" in text and "0 records, 0.0 s at risk" in text
    assert "every group translated exactly" in text and "readiness" in text
    assert "**Rejecting**" in text and "unverified" in text
    assert "<b>" not in text and "[x](http" not in text


def test_extra_fields_from_the_slack_service_are_read_but_not_in_the_form():
    form, _ = form_schema(SUMMARY)
    answer = form(decision="reject", reason="no", approver="alice", channel="slack", approval_id=7)
    assert (answer.approved, answer.approver, answer.channel, answer.approval_id) == (
        False, "alice", "slack", 7)
    ui = form(decision="approve")
    assert (ui.approver, ui.channel, ui.approval_id) == ("prefect-ui user", "prefect-ui", None)


class Store:
    def __init__(self, authority):
        self.authority = authority

    def current(self, domain):
        return self.authority


def context(fenced_seconds_ago: float, *, current=True, entries=(), max_fenced=10.0):
    import tempfile
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from types import SimpleNamespace

    from baton.audit import AuditStore
    from baton.authority.record import Authority, State
    from baton.settings import Topology

    topology = Topology(
        domain={"name": "orders", "topics": ["orders.events"], "initial_owner": "east"},
        regions={r: {"bootstrap_servers": f"{r}:9092", "security_protocol": "PLAINTEXT"}
                 for r in ("east", "west")},
        thresholds={"max_fenced_seconds": max_fenced},
        audit={"database_url": f"sqlite:///{Path(tempfile.mkdtemp()) / 'audit.db'}"})

    authority = Authority(domain="orders", epoch=2, owner="east", state=State.FENCED, run_id="run-1",
                          changed_at=datetime.now(UTC) - timedelta(seconds=fenced_seconds_ago),
                          changed_by="ops")
    return SimpleNamespace(
        domain="orders", runbook="failover", run_id="run-1", unplanned=False, old_owner="east",
        new_owner="west",
        log=lambda m: None, topology=topology, audit=AuditStore.for_topology(topology),
        authority=Store(authority),
        state={"fenced": True,
               "verify_secondary_currency": {"current": current, "statement": "0 records at risk"},
               "translate_consumer_offsets": {"translation": {"entries": list(entries)}}})


EXACT = {"group": "g", "topic": "t", "partition": 0, "method": "exact", "translated_offset": 5,
         "missing": 0, "duplicates_bound": 0}


def test_switch_conditions_hold_or_name_the_one_that_failed():
    from baton.errors import SwitchConditionFailed
    from baton.steps.switch_conditions import check_switch_conditions

    evidence = check_switch_conditions(context(1.0, entries=[EXACT]))
    assert evidence["failed"] == []
    assert {c["condition"] for c in evidence["conditions"]} == {
        "0 records at risk once fenced", "every group translated exactly", "readiness passing",
        "fenced window within thresholds.max_fenced_seconds"}
    for ctx, named in [
        (context(1.0, current=False, entries=[EXACT]), "0 records at risk once fenced"),
        (context(1.0, entries=[EXACT | {"method": "checkpoint", "duplicates_bound": 3}]),
         "every group translated exactly"),
        (context(12.0, entries=[EXACT]), "fenced window within thresholds.max_fenced_seconds"),
    ]:
        with pytest.raises(SwitchConditionFailed, match=f"switch condition failed: {named}"):
            check_switch_conditions(ctx)
        assert named in ctx.state["switch_conditions"]["failed"]


def test_failback_does_not_wait_for_a_watch_sample_of_the_flow_it_just_started():
    from baton.steps.switch_conditions import readiness

    ctx = context(1.0, entries=[EXACT])
    unmeasured = readiness(ctx)  # a failover with no watch sample: not measured, and says so
    assert unmeasured["available"] is False and "no watch sample of east -> west" in unmeasured["statement"]
    ctx.runbook = "failback"
    assert readiness(ctx) == {"available": False, "passing": None,
                              "statement": "readiness: not used by failback (it verifies currency itself)"}


def test_a_watch_sample_of_the_runs_own_replication_stop_does_not_fail_readiness():
    """Inside the fence the run stops replication old -> new once currency holds; a sample taken
    after that shows replication_running failing, which is not the new owner's readiness. Any
    other failing check still fails the condition."""
    from datetime import UTC, datetime

    from baton.errors import SwitchConditionFailed
    from baton.steps.switch_conditions import check_switch_conditions
    from baton.watch.readiness import FAIL, Check, Readiness
    from baton.watch.sampler import Sample
    from baton.watch.store import SampleStore

    def record(ctx, *checks):
        now = datetime.now(UTC).timestamp()
        SampleStore(ctx.audit).record(
            Sample(domain="orders", owner="east", secondary="west", taken_at=now, interval_seconds=5.0,
                   replication_state="STOPPED", heartbeat_age_seconds=1.0, records_at_risk=0,
                   seconds_at_risk=0.0),
            Readiness("orders", "east", "west", now, list(checks)))

    ctx = context(1.0, entries=[EXACT])
    record(ctx, Check("replication_running", FAIL, "replication east -> west is STOPPED"))
    evidence = check_switch_conditions(ctx)
    readiness = next(c for c in evidence["conditions"] if c["condition"] == "readiness passing")
    assert readiness["holds"] and "this run stops replication" in readiness["evidence"]["not_counted"]

    ctx = context(1.0, entries=[EXACT])
    record(ctx, Check("replication_running", FAIL, "replication east -> west is STOPPED"),
           Check("producers_can_write", FAIL, "no ALLOW WRITE for User:orders-app on west"))
    with pytest.raises(SwitchConditionFailed, match="readiness passing"):
        check_switch_conditions(ctx)
