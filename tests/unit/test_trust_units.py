"""Trust boundaries on plain data: total parsing of clicks, the unverified-request limit,
escaping for Slack and Markdown, bounded fields, the auto-approve policy, the signed chain head."""

from __future__ import annotations

import contextlib
import itertools
import json

import pytest

from baton.approvals import messages
from baton.approvals.policy import (
    auto_approve_refusal,
    claimed_name,
    is_unverified,
    may_auto_approve,
    unverified,
)
from baton.approvals.requests import REASON_INPUT, ActionId, BlockId
from baton.approvals.service import Click, MalformedPayload, UnverifiedLimiter, form_payload
from baton.audit import AuditStore
from baton.audit.store import bounded
from baton.settings import Topology
from flows.runner import escape_markdown

INJECTION = "<!channel> <https://evil.example/approve|Approve> & ![x](http://e/x.png) <img src=x>"


def click(**overrides) -> dict:
    payload = {"type": "block_actions", "user": {"id": "U0ALICE", "username": "alice"},
               "actions": [{"action_id": ActionId.APPROVE, "value": "{}"}],
               "state": {"values": {BlockId.REASON: {REASON_INPUT: {"value": " why "}}}},
               "channel": {"id": "C0APPROVALS"}, "message": {"ts": "1.2", "blocks": []}}
    return payload | overrides


def test_a_good_click_parses():
    parsed = Click.from_payload(click())
    assert (parsed.action, parsed.user_id, parsed.user_name, parsed.reason, parsed.channel_id) == (
        ActionId.APPROVE, "U0ALICE", "alice", "why", "C0APPROVALS")


@pytest.mark.parametrize(("payload", "field"), [
    (click(user="U0APPROVER"), "user"),
    (click(actions=["baton.approve"]), "actions[0]"),
    (click(actions="baton.approve"), "actions"),
    (click(state={"values": []}), "state.values"),
    (click(state={"values": {BlockId.REASON: {REASON_INPUT: {"value": ["a"]}}}}), "the reason"),
    (click(message={"blocks": "x"}), "message.blocks"),
    (click(user={"id": {"nested": 1}}), "user.id"),
    ([1, 2], "the payload"),
    ("text", "the payload"),
])
def test_wrong_shapes_name_the_field(payload, field):
    with pytest.raises(MalformedPayload, match=field.replace("[", r"\[").replace("]", r"\]")):
        Click.from_payload(payload)


def test_parsing_is_total_over_many_shapes():
    values = [None, 1, 1.5, True, "s", [], [1], {}, {"a": 1}, ["baton.approve"]]
    keys = ["user", "actions", "state", "message", "channel", "team", "container"]
    for key, value in itertools.product(keys, values):
        with contextlib.suppress(MalformedPayload):  # a named refusal; anything else fails the test
            Click.from_payload(click(**{key: value}))
    assert Click.claimed([1]).action == "unknown"
    assert form_payload(b"payload=%5B1%5D") == [1] and form_payload(b"\xff") is None


def test_unverified_requests_are_limited_per_source_and_summarized():
    now = [0.0]
    limiter = UnverifiedLimiter(limit=3, window=60, clock=lambda: now[0])
    assert [limiter.admit("10.0.0.1") for _ in range(3)] == [(True, None)] * 3
    admitted, summary = limiter.admit("10.0.0.1")
    assert not admitted and summary.startswith("rate limit: more than 3 unverified requests from 10.0.0.1")
    assert limiter.admit("10.0.0.1") == (False, None)
    assert limiter.admit("10.0.0.2") == (True, None)  # per source
    now[0] = 61
    admitted, summary = limiter.admit("10.0.0.1")
    assert admitted and summary.startswith("2 more unverified requests from 10.0.0.1")


def test_slack_text_is_escaped():
    escaped = messages.escape(INJECTION)
    assert "<" not in escaped and ">" not in escaped and "&amp;" in escaped
    lines = messages.evidence_lines({"reason": INJECTION, "started_by": "<!here>"})
    assert all("<!" not in line for line in lines)
    assert "&lt;!channel&gt;" in messages.decided_text("rejected", "alice", comment=INJECTION)
    assert messages.mention("U0ALICE", "<b>") == "<@U0ALICE> (&lt;b&gt;)"
    assert messages.mention("<!channel>", "x") == "&lt;!channel&gt; (x)"
    assert "&lt;" in messages.compensation_text({"actions": ["<!everyone>"]})


def test_markdown_artifact_text_is_escaped():
    text = escape_markdown(INJECTION + "\n# heading")
    assert "<" not in text and ">" not in text and "\n" not in text
    assert "\\[x\\]\\(http://e/x.png\\)" in text and "\\|Approve" in text


def test_bounded_cuts_and_says_how_much():
    assert bounded("abc", 10) == "abc"
    cut = bounded("x" * 5_000_000, 200)
    assert len(cut) == 200 and cut.endswith("more chars]")


def lab_like(**approvals) -> Topology:
    region = {"bootstrap_servers": "192.0.2.1:9092", "admin": {"username": "a", "password": "b"}}
    return Topology(domain={"name": "orders", "topics": ["orders.events"], "initial_owner": "east"},
                    regions={"east": region, "west": region}, approvals=approvals)


def test_auto_approve_follows_the_topology():
    closed = lab_like()
    assert auto_approve_refusal(closed, ["approve-failover", "approve-switch"]).startswith(
        "auto-approve is refused for approve-failover, approve-switch")
    partly = lab_like(auto_approve_gates=["approve-failover"])
    assert may_auto_approve(partly, "approve-failover") and not may_auto_approve(partly, "approve-switch")
    assert "approve-switch" in auto_approve_refusal(partly, ["approve-failover", "approve-switch"])
    assert auto_approve_refusal(partly, ["approve-failover"]) is None
    assert may_auto_approve(closed, "approve-switch", lab=True)
    with pytest.raises(ValueError, match="auto_approve_gates"):
        lab_like(auto_approve_gates=["switch"])


def test_unverified_starters_are_marked_once():
    assert unverified("intruder") == "unverified: intruder" == unverified("unverified: intruder")
    assert unverified(None) == "unverified: unknown"
    assert is_unverified("unverified: x") and not is_unverified("alice")
    assert claimed_name("unverified: bob") == "bob"


def test_the_chain_head_is_signed_with_a_key_the_database_does_not_hold(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    signed = AuditStore(url, chain_key=b"k1")
    signed.start_run("orders", "failover", started_by="alice")
    assert signed.verify().ok and signed.verify().signed
    assert AuditStore(url, chain_key=b"another key").verify().first_break.table == "chain_head"
    assert AuditStore(url).verify().ok  # without a key the signature cannot be checked
    assert "k1" not in json.dumps([str(v) for v in signed.head().model_dump().values()])


def test_one_decision_per_gate_by_compare_and_set(tmp_path):
    from sqlalchemy import text

    from baton.errors import AlreadyDecided

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    run = store.start_run("orders", "failover", started_by="alice")
    store.open_gate(run.id, "approve-failover", "flow-1")
    click = dict(action="baton.approve", outcome="accepted", run_id=run.id, gate="approve-failover",
                 decision="approved", approver="bob", identity_verified=True)
    with pytest.raises(AlreadyDecided):  # another flow run's button cannot claim it
        store.record_approval_attempt(**click, flow_run_id="flow-2")
    first = store.record_approval_attempt(**click, flow_run_id="flow-1")
    with pytest.raises(AlreadyDecided):
        store.record_approval_attempt(**click, flow_run_id="flow-1")
    assert store.gate_slot(run.id, "approve-failover").approval_id == first.approval_id
    # Prefect did not take it: the refusal voids the decision and frees the gate.
    store.record_approval_attempt(action="baton.approve", outcome="refused", run_id=run.id,
                                  gate="approve-failover", approval_id=first.approval_id)
    second = store.record_approval_attempt(**click, flow_run_id="flow-1")
    assert [a.id for a in store.run(run.id).approvals] == [first.approval_id, second.approval_id]
    assert store.verify().ok
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE gate_decisions SET approval_id = 999"))
    assert store.verify().first_break.table == "gate_decisions"
