"""Approval settings, request values and message building (plain data, no services)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from baton.approvals.messages import evidence_lines, request_blocks, without_buttons
from baton.approvals.requests import ActionId, BlockId, GateRequest
from baton.approvals.service import Click
from baton.settings import ApprovalSettings


def test_settings_name_the_bad_slack_id():
    with pytest.raises(ValidationError, match="'alice' is not a Slack user id"):
        ApprovalSettings(approvers=["alice"])
    with pytest.raises(ValidationError, match="not a Slack user group id"):
        ApprovalSettings(approver_groups=["U0ABC"])
    with pytest.raises(ValidationError, match="'switch' is not a gate name"):
        ApprovalSettings(require_slack_for=["switch"])


def test_missing_for_slack_depends_on_the_transport():
    settings = ApprovalSettings(slack_channel="C0X", slack_bot_token="xoxb-1", approvers=["U0A"])
    assert settings.missing_for_slack() == ["slack_signing_secret"]
    assert settings.missing_for_slack(socket_mode=True) == ["slack_app_token"]
    assert ApprovalSettings().missing_for_slack() == [
        "slack_channel", "slack_bot_token", "slack_signing_secret", "approvers or approver_groups"]


def test_prefect_urls_default_from_the_api_url(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect:4200/api/")
    settings = ApprovalSettings()
    assert settings.resolved_prefect_api_url() == "http://prefect:4200/api"
    assert settings.resolved_prefect_ui_url() == "http://prefect:4200"


def test_gate_request_round_trips_and_refuses_foreign_values():
    request = GateRequest(run_id="failover-1", gate="approve-switch", flow_run_id="f-1", domain="orders")
    assert GateRequest.decode(request.encode()) == request
    for value in ("", "{}", "not json", '{"run_id": "", "gate": "g", "flow_run_id": "f"}'):
        with pytest.raises(ValueError):
            GateRequest.decode(value)


def test_request_blocks_carry_evidence_and_buttons_and_a_click_reads_them_back():
    request = GateRequest(run_id="failover-1", gate="approve-switch", flow_run_id="f-1", domain="orders",
                          runbook="failover")
    summary = {"runbook": "failover", "domain": "orders", "gate": "approve-switch", "started_by": "carol",
               "planned_change": "east -> west (epoch 2 -> 3)", "data_at_risk_records": 0,
               "translation": {"groups": 2, "partitions": 6, "methods": ["exact"]}}
    lines = evidence_lines(summary)
    assert "*Records at risk*: 0" in lines
    assert "*Consumer groups translated*: 2 groups, 6 partitions, methods exact" in lines
    blocks = request_blocks(request, summary, "http://prefect/runs/flow-run/f-1")
    actions = next(b for b in blocks if b.get("block_id") == BlockId.ACTIONS)["elements"]
    assert [a["action_id"] for a in actions] == [ActionId.APPROVE, ActionId.REJECT]
    assert {b.get("block_id") for b in without_buttons(blocks)} & {BlockId.ACTIONS, BlockId.REASON} == set()
    payload = {"type": "block_actions", "user": {"id": "U0B", "username": "bob"}, "team": {"id": "T0"},
               "channel": {"id": "C0"}, "message": {"ts": "1.2", "blocks": blocks},
               "state": {"values": {BlockId.REASON: {"baton.reason_input": {"value": " no "}}}},
               "actions": [{"action_id": ActionId.REJECT, "value": actions[1]["value"]}]}
    click = Click.from_payload(payload)
    assert (click.decision, click.user_id, click.team_id, click.channel_id, click.reason) == (
        "rejected", "U0B", "T0", "C0", "no")
    assert GateRequest.decode(click.value) == request
    assert Click.from_payload({"type": "view_submission"}) is None
