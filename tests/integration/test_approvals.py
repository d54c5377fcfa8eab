"""Approvals in Slack against real components: slack-sdk's WebClient talking to a local Slack
stand-in, the approval service running as `baton approvals serve` (HTTP, or Socket Mode against
a local websocket stand-in), a real Prefect server, and failover flows paused on the lab.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from baton.approvals.requests import ActionId, BlockId
from baton.audit import AuditStore
from baton.audit.store import default_actor
from baton.kafka.fencing import present_bindings
from baton.lab.prefect_server import free_port
from baton.settings import load_topology
from tests.conftest import wait_until
from tests.integration.runbook_support import make_domain, produce_error, restore_lab, resume, wait_paused_at
from tests.integration.test_runbooks import authority_of, seed, start_cli_failover
from tests.slack_standin import (
    APP_TOKEN,
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    SlackStandIn,
    SocketModeStandIn,
    click_payload,
    signed_request,
)

pytestmark = pytest.mark.integration

ALICE, BOB, INITIATOR, MALLORY = "U0ALICE", "U0BOB", "U0INITIATOR", "U0MALLORY"
ONCALL = "S0ONCALL"


@pytest.fixture
def slack():
    standin = SlackStandIn(groups={ONCALL: [BOB]}).start()
    yield standin
    standin.stop()


@pytest.fixture
def approvals_domain(topology, tmp_path, prefect_api, slack):
    """Factory: a private domain whose topology sends approvals to the Slack stand-in."""
    created = []

    def create(require_slack_for=(), reminder_before_seconds=300.0, **thresholds) -> Path:
        path = make_domain(topology, tmp_path, **thresholds)
        document = yaml.safe_load(path.read_text())
        document["approvals"] = {
            "slack_channel": CHANNEL, "slack_bot_token": BOT_TOKEN, "slack_app_token": APP_TOKEN,
            "slack_signing_secret": SIGNING_SECRET, "slack_api_url": slack.api_url,
            "approvers": [ALICE, INITIATOR], "approver_groups": [ONCALL],
            "operators": {ALICE: "alice", INITIATOR: default_actor()},
            "require_slack_for": list(require_slack_for), "reminder_before_seconds": reminder_before_seconds,
            "prefect_api_url": prefect_api}
        path.write_text(yaml.safe_dump(document))
        created.append(path)
        return path

    yield create
    for path in created:
        restore_lab(load_topology(path))


class Service:
    """`baton approvals serve` in a subprocess, on a free port."""

    def __init__(self, path: Path, tmp_path: Path, socket_mode: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"approvals-{self.port}.log"
        command = [sys.executable, "-m", "baton", "approvals", "serve", "--config", str(path),
                   "--port", str(self.port)] + (["--socket-mode"] if socket_mode else [])
        self.process = subprocess.Popen(command, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

        def healthy():
            assert self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/health", timeout=1).json()["status"] == "ok"
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "the approval service to answer /health")

    def click(self, payload: dict, **signing) -> int:
        body, headers = signed_request(payload, **signing)
        response = httpx.post(f"{self.url}/slack/interactions", content=body, headers=headers, timeout=30)
        return response.status_code

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(10)
        return self.log.read_text()


def state_of(flow_run_id: str) -> tuple[str, str | None]:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            return run.state.type.value, run.state.state_details.pause_key

    return asyncio.run(read())


def updates_of(slack: SlackStandIn, request: dict) -> list[dict]:
    return [u for u in slack.called("chat.update") if u["ts"] == request["_ts"]]


def attempts_of(store: AuditStore, run_id: str) -> list[tuple]:
    # A stale click sent 400 s in the past may be judged a second later: "400+" covers both.
    def age(match):
        return "timestamp 400+ s old" if int(match.group(1)) >= 400 else match.group(0)

    return [(a.action, a.slack_user_id, a.outcome, re.sub(r"timestamp (\d+) s old", age, a.reason),
             a.identity_verified) for a in store.run(run_id).approval_attempts]


def test_slack_clicks_approve_a_real_planned_failover_once(approvals_domain, slack, tmp_path):
    path = approvals_domain()
    t = load_topology(path)
    topic, _ = seed(t)
    service = Service(path, tmp_path)
    process = start_cli_failover(path)
    try:
        flow_run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        request = wait_until(lambda: slack.requests(), 20, "the approval request in Slack")[0]
        # The request: evidence, a link to the run, a reason box and the two buttons.
        assert request["channel"] == CHANNEL
        evidence = next(b for b in request["blocks"] if b.get("block_id") == BlockId.EVIDENCE)["text"]["text"]
        for expected in ("*Runbook*: failover", f"*Domain*: {t.domain.name}", "*Gate*: approve-failover",
                         f"*Started by*: {default_actor()}",
                         "*Planned authority change*: east -&gt; west",  # mrkdwn-escaped
                         "*Lag*: "):
            assert expected in evidence
        assert f"/runs/flow-run/{flow_run}" in json.dumps(request["blocks"])
        buttons = next(b for b in request["blocks"] if b.get("block_id") == BlockId.ACTIONS)["elements"]
        assert [b["action_id"] for b in buttons] == [ActionId.APPROVE, ActionId.REJECT]
        store = AuditStore.for_topology(t)
        run_id = store.runs(t.domain.name)[0].id

        # Each of these changes nothing (the run stays paused at the same pause) and is recorded.
        approve = click_payload(request, ActionId.APPROVE, ALICE, "alice")
        assert service.click(approve, secret="not-the-signing-secret") == 401
        assert service.click(approve, timestamp=int(time.time()) - 400) == 401
        assert service.click(click_payload(request, ActionId.APPROVE, MALLORY)) == 200
        assert service.click(click_payload(request, ActionId.APPROVE, INITIATOR)) == 200
        assert service.click(click_payload(request, ActionId.REJECT, ALICE, "alice")) == 200  # no reason
        assert state_of(flow_run) == ("PAUSED", "approve-failover-1")
        assert store.run(run_id).approvals == []
        assert attempts_of(store, run_id) == [
            (ActionId.APPROVE, ALICE, "refused", "not verified: bad signature", False),
            (ActionId.APPROVE, ALICE, "refused",
             "not verified: stale request: timestamp 400+ s old (limit 300 s)", False),
            (ActionId.APPROVE, MALLORY, "refused", f"{MALLORY} is not an approver", True),
            (ActionId.APPROVE, INITIATOR, "refused",
             f"two-person rule: {default_actor()} started this run and cannot approve it", True),
            (ActionId.REJECT, ALICE, "refused",
             "a rejection needs a reason: write it in the box, then press Reject", True)]
        told = [e["user"] for e in slack.called("chat.postEphemeral")]
        assert told == [MALLORY, INITIATOR, ALICE]  # verified users hear why; forgeries hear nothing

        # Alice approves; the same click arrives twice: the run resumes once. A planned run
        # asks once, before the fence: it then switches without a second request.
        assert service.click(approve) == 200
        assert service.click(approve) == 200
        stdout, stderr = process.communicate(timeout=120)
        update = updates_of(slack, request)[-1]
        assert not any(b.get("block_id") == BlockId.ACTIONS for b in update["blocks"])
        assert "*Approved* by <@U0ALICE> (alice)" in json.dumps(update["blocks"])
        assert attempts_of(store, run_id)[-2:] == [
            (ActionId.APPROVE, ALICE, "accepted", "", True),
            (ActionId.APPROVE, ALICE, "refused", attempts_of(store, run_id)[-1][3], True)]
        assert attempts_of(store, run_id)[-1][3].startswith("already approved by alice")
    finally:
        process.kill()
        logs = service.stop()
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["owner_after"] == "west"
    assert len(slack.requests()) == 1
    view = store.run(run_id)
    assert view.status == "succeeded"
    assert [(a.gate, a.decision, a.approver, a.channel, a.identity_verified) for a in view.approvals] == [
        ("approve-failover", "approved", "alice", "slack", True)]
    assert store.verify().ok
    assert BOT_TOKEN not in logs and SIGNING_SECRET not in logs
    assert '"event": "attempt"' in logs  # structured


def test_prefect_ui_answers_require_slack_reminder_and_slack_reject(approvals_domain, slack, tmp_path):
    # The reminder goes out 10 s after the request; 30 s remain after it for the reject (loaded CI).
    path = approvals_domain(require_slack_for=["approve-failover"], reminder_before_seconds=30,
                            gate_timeout_seconds=40)
    t = load_topology(path)
    topic, _ = seed(t)
    service = Service(path, tmp_path)
    process = start_cli_failover(path)
    try:
        flow_run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        first = wait_until(lambda: slack.requests(), 20, "the approval request")[0]
        # approve-failover requires Slack: the UI answer is refused and the gate keeps waiting.
        resume(flow_run, decision="approve", approver="carol")
        wait_until(lambda: state_of(flow_run) == ("PAUSED", "approve-failover-2"), 20,
                   "the gate to pause again after refusing the UI answer")
        reminder = wait_until(lambda: [m for m in slack.called("chat.postMessage")
                                       if m.get("thread_ts") == first["_ts"]], 45, "the reminder")[0]
        assert "Reminder: approve-failover times out" in reminder["text"]
        # Bob (an approver through the on-call user group) rejects, with a reason.
        reject = click_payload(first, ActionId.REJECT, BOB, "bob", reason="west looks wrong")
        assert service.click(reject) == 200
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1 and "rejected by bob: west looks wrong" in stderr
        # A click after the run stopped changes nothing and is recorded.
        assert service.click(click_payload(first, ActionId.APPROVE, ALICE, "alice")) == 200
    finally:
        process.kill()
        service.stop()
    store = AuditStore.for_topology(t)
    run_id = store.runs(t.domain.name)[0].id
    view = store.run(run_id)
    assert [(a.gate, a.decision, a.approver, a.channel, a.identity_verified) for a in view.approvals] == [
        ("approve-failover", "refused", "carol", "prefect-ui", False),
        ("approve-failover", "rejected", "bob", "slack", True)]
    assert attempts_of(store, run_id)[-1][:3] == (ActionId.APPROVE, ALICE, "refused")
    final = json.dumps(updates_of(slack, first)[-1]["blocks"])
    assert "*Rejected* by" in final and "west looks wrong" in final
    # Rejected before the fence: nothing was changed.
    authority = authority_of(t)
    assert (authority.owner, authority.state.value, authority.epoch) == ("east", "ACTIVE", 1)
    assert produce_error(t, "east", topic) is None and present_bindings(t, "east") == []
    assert store.verify().ok


def test_socket_mode_envelope_is_acknowledged_and_handled(approvals_domain, slack, tmp_path):
    websocket = SocketModeStandIn().start()
    slack.websocket_url = websocket.url
    path = approvals_domain()
    service = Service(path, tmp_path, socket_mode=True)
    env = os.environ | {"BATON_CONFIG": str(path)}
    probe = subprocess.Popen([sys.executable, "-m", "tests.integration.gate_probe", str(path),
                              "--operator", "carol", "--poll", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert websocket.connected.wait(20), service.log.read_text()
        wait_paused_at("gate-probe", "approve-failover", config=path)
        request = wait_until(lambda: slack.requests(), 20, "the approval request")[0]
        envelope = websocket.push_interactive(click_payload(request, ActionId.APPROVE, ALICE, "alice"))
        wait_until(lambda: {"envelope_id": envelope} in websocket.acks, 10, "the envelope's ack")
        _, stderr = probe.communicate(timeout=60)
    finally:
        probe.kill()
        service.stop()
        websocket.stop()
    assert probe.returncode == 0, stderr
    result = json.loads(next(line for line in stderr.splitlines() if line.startswith("GATE-PROBE "))[11:])
    assert (result["decision"], result["approver"], result["channel"]) == ("approved", "alice", "slack")
    store = AuditStore.for_topology(load_topology(path))
    attempt = store.run(result["run_id"]).approval_attempts[0]
    assert (attempt.outcome, attempt.identity_verified) == ("accepted", True)
    assert attempt.verified_by == "socket-mode"
    assert (attempt.slack_team_id, attempt.slack_channel_id) == ("T0BATON", CHANNEL)
