"""The approval service: Slack's interactivity endpoint (HTTP) and Socket Mode, one handler.

A click is a security decision. In order, a click is refused (and recorded, and nothing else
happens) when: the request is not signed by Slack or is older than 5 minutes (HTTP 401); the
user is not an approver; the run is unknown or finished; the two-person rule forbids it (the
person who started the run cannot approve it; rejecting, which only stops the run, is
allowed); a rejection has no reason; the gate was already decided or timed out; or the flow
run is not paused at that gate. Otherwise the decision is recorded (approvals row, channel
slack, identity verified) and the flow run is resumed with it as the run input; the gate
checks that row before it trusts the input. The message then shows who decided, when and
what, without buttons. Clicks are handled one at a time, so a double click resumes once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs

from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError
from slack_sdk.signature import SignatureVerifier

from baton.approvals import messages
from baton.approvals.prefect_api import PrefectRuns, PrefectUnavailable
from baton.approvals.requests import REASON_INPUT, ActionId, BlockId, GateRequest
from baton.approvals.slack import web_client
from baton.audit import AuditStore
from baton.errors import UsageError

log = logging.getLogger("baton.approvals")

MAX_REQUEST_AGE_SECONDS = 300  # Slack's advice: refuse older requests (replay)
GROUP_CACHE_SECONDS = 60


@dataclass
class Click:
    """One press of an Approve/Reject button, as Slack described it."""

    action: str
    value: str
    user_id: str = ""
    user_name: str = ""
    team_id: str = ""
    channel_id: str = ""
    message_ts: str = ""
    message_blocks: list[dict] = field(default_factory=list)
    reason: str = ""

    @classmethod
    def from_payload(cls, payload: Mapping) -> Click | None:
        """The click in a block_actions payload, or None if it is not one of our buttons."""
        if not isinstance(payload, Mapping) or payload.get("type") != "block_actions":
            return None
        ours = [a for a in payload.get("actions") or [] if a.get("action_id") in set(ActionId)]
        if not ours:
            return None
        user = payload.get("user") or {}
        message = payload.get("message") or {}
        container = payload.get("container") or {}
        values = ((payload.get("state") or {}).get("values") or {}).get(BlockId.REASON, {})
        reason = (values.get(REASON_INPUT) or {}).get("value") or ""
        channel = (payload.get("channel") or {}).get("id") or container.get("channel_id")
        return cls(action=ours[0]["action_id"], value=str(ours[0].get("value", "")),
                   user_id=str(user.get("id", "")),
                   user_name=str(user.get("username") or user.get("name") or ""),
                   team_id=str((payload.get("team") or {}).get("id") or user.get("team_id") or ""),
                   channel_id=str(channel or ""),
                   message_ts=str(message.get("ts") or container.get("message_ts") or ""),
                   message_blocks=list(message.get("blocks") or []), reason=reason.strip())

    @property
    def decision(self) -> str:
        return "approved" if self.action == ActionId.APPROVE else "rejected"


@dataclass
class Outcome:
    """What became of a request: the HTTP status to answer and whether the click counted."""

    status_code: int
    accepted: bool
    reason: str


def form_payload(body: bytes) -> dict | None:
    """The JSON `payload` field of Slack's form-encoded interactive request."""
    try:
        value = parse_qs(body.decode("utf-8")).get("payload", [None])[0]
        return json.loads(value) if value else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


class ApprovalService:
    """Handles clicks for one topology (its approvals settings and audit database)."""

    def __init__(self, topology, *, slack: WebClient | None = None, prefect: PrefectRuns | None = None,
                 audit: AuditStore | None = None, clock=time.time):
        self.settings = topology.approvals
        self.audit = audit or AuditStore.for_topology(topology)
        self.slack = slack or web_client(self.settings)
        self.prefect = prefect or PrefectRuns(self.settings.resolved_prefect_api_url())
        secret = self.settings.slack_signing_secret
        self.verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        self.clock = clock
        self._lock = threading.Lock()
        self._group_members: tuple[float, set[str]] = (0.0, set())

    # -- transports ---------------------------------------------------------------------------

    def handle_http(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """A POST from Slack's interactivity: verify signature and age first."""
        headers = {k.lower(): v for k, v in headers.items()}
        payload = form_payload(body)
        problem = self._signature_problem(body, headers)
        if problem:
            self._record_unverified(payload, problem)
            return Outcome(401, False, problem)
        if payload is None:
            return Outcome(400, False, "no interactive payload in the request")
        return self.handle_payload(payload, verified_by="signature")

    def handle_payload(self, payload: Mapping, *, verified_by: str) -> Outcome:
        """An interactive payload whose origin is verified (signature, or the Socket Mode link)."""
        click = Click.from_payload(payload)
        if click is None:
            log.info("ignored an interaction that is not a Baton button", extra={"fields": {
                "event": "ignored", "type": payload.get("type") if isinstance(payload, Mapping) else None}})
            return Outcome(200, False, "not a Baton approval action")
        with self._lock:  # one decision at a time: the same click twice resumes once
            outcome = self._decide(click, verified_by)
        if not outcome.accepted and click.user_id and click.channel_id:
            self._tell(click, f"Not accepted: {outcome.reason}. Nothing was changed.")
        return outcome

    def health(self) -> dict:
        try:
            self.audit.runs(limit=1)
            audit_ok = True
        except Exception:  # health reports; it never raises
            audit_ok = False
        prefect_ok = self.prefect.healthy()
        return {"status": "ok" if audit_ok and prefect_ok else "degraded", "audit": audit_ok,
                "prefect": prefect_ok}

    # -- checks ---------------------------------------------------------------------------------

    def _signature_problem(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        if self.verifier is None:
            return "the service has no signing secret (approvals.slack_signing_secret)"
        timestamp, signature = headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature")
        if not timestamp or not signature:
            return "missing Slack signature headers"
        try:
            age = self.clock() - int(timestamp)
        except ValueError:
            return "malformed request timestamp"
        if abs(age) > MAX_REQUEST_AGE_SECONDS:
            return f"stale request: timestamp {age:.0f} s old (limit {MAX_REQUEST_AGE_SECONDS} s)"
        if not self.verifier.is_valid(body, timestamp, signature):
            return "bad signature"
        return None

    def _is_approver(self, user_id: str) -> bool:
        if user_id in self.settings.approvers:
            return True
        return bool(self.settings.approver_groups) and user_id in self._groups()

    def _groups(self) -> set[str]:
        fetched_at, members = self._group_members
        if time.monotonic() - fetched_at < GROUP_CACHE_SECONDS:
            return members
        members = set()
        for group in self.settings.approver_groups:
            try:
                members |= set(self.slack.usergroups_users_list(usergroup=group)["users"])
            except SlackClientError as e:
                log.error("could not read user group %s: %s", group, e,
                          extra={"fields": {"event": "slack_error", "group": group}})
        self._group_members = (time.monotonic(), members)
        return members

    def _approver_name(self, click: Click) -> str:
        return self.settings.operators.get(click.user_id) or click.user_name or click.user_id

    def _is_initiator(self, click: Click, started_by: str) -> bool:
        names = {self.settings.operators.get(click.user_id), click.user_name, click.user_id}
        return started_by.casefold() in {n.casefold() for n in names if n}

    # -- the decision -----------------------------------------------------------------------------

    def _decide(self, click: Click, verified_by: str) -> Outcome:
        try:
            request = GateRequest.decode(click.value)
        except ValueError as e:
            return self._refuse(click, None, verified_by, str(e))
        if not self._is_approver(click.user_id):
            return self._refuse(click, request, verified_by, f"{click.user_id} is not an approver")
        try:
            view = self.audit.run(request.run_id)
        except UsageError:
            return self._refuse(click, request, verified_by, f"unknown run {request.run_id}")
        gate_rows = [a for a in view.approvals if a.gate == request.gate]
        if any(a.decision == "timed_out" for a in gate_rows):
            return self._refuse(click, request, verified_by, f"{request.gate} timed out; the run stopped")
        if view.status != "running":
            return self._refuse(click, request, verified_by, f"the run is {view.status}")
        if (self.settings.two_person_rule and click.action == ActionId.APPROVE
                and self._is_initiator(click, view.run.started_by)):
            return self._refuse(click, request, verified_by,
                                f"two-person rule: {view.run.started_by} started this run and "
                                "cannot approve it")
        if click.action == ActionId.REJECT and not click.reason:
            return self._refuse(click, request, verified_by,
                                "a rejection needs a reason: write it in the box, then press Reject")
        attempts = [a for a in view.approval_attempts if a.gate == request.gate]
        undelivered = {a.approval_id for a in attempts if a.outcome == "refused" and a.approval_id}
        earlier = [a for a in attempts if a.outcome == "accepted" and a.approval_id not in undelivered]
        if earlier:
            first = next(a for a in gate_rows if a.id == earlier[0].approval_id)
            return self._refuse(click, request, verified_by,
                                f"already {first.decision} by {first.approver} "
                                f"at {first.decided_at:%H:%M:%S} UTC")
        try:
            state = self.prefect.pause_state(request.flow_run_id)
        except PrefectUnavailable as e:
            return self._refuse(click, request, verified_by, f"cannot reach Prefect to resume the run ({e})")
        if not state.waiting_at(request.gate):
            where = f"paused at {state.pause_key}" if state.paused else f"{(state.state_name or '?').lower()}"
            return self._refuse(click, request, verified_by,
                                f"the flow run is not waiting at {request.gate} (it is {where})")
        if state.expired():
            return self._refuse(click, request, verified_by, f"{request.gate} timed out")
        return self._accept(click, request, verified_by)

    def _accept(self, click: Click, request: GateRequest, verified_by: str) -> Outcome:
        approver = self._approver_name(click)
        attempt = self._record(click, request, verified_by, "accepted", "", decision=click.decision,
                               approver=approver, comment=click.reason)
        run_input = {"approved": click.action == ActionId.APPROVE, "approver": approver,
                     "comment": click.reason, "channel": "slack", "approval_id": attempt.approval_id}
        try:
            status, why = self.prefect.resume(request.flow_run_id, run_input)
        except PrefectUnavailable as e:
            status, why = "ERROR", str(e)
        if status != "ACCEPT":
            # The decision never reached the run: say so next to it, so it is not counted.
            reason = f"Prefect did not resume the run ({status}: {why or 'no reason given'})"
            self._record(click, request, verified_by, "refused", reason, approval_id=attempt.approval_id)
            return Outcome(200, False, reason)
        log.info("%s %s of run %s by %s", request.gate, click.decision, request.run_id, approver,
                 extra={"fields": {"event": "decided", "run_id": request.run_id, "gate": request.gate,
                                   "decision": click.decision, "slack_user": click.user_id,
                                   "approval_id": attempt.approval_id, "verified_by": verified_by}})
        self._update_message(click, request, approver)
        return Outcome(200, True, click.decision)

    def _update_message(self, click: Click, request: GateRequest, approver: str) -> None:
        if not (click.channel_id and click.message_ts):
            return
        who = f"<@{click.user_id}> ({approver})"
        blocks = messages.without_buttons(click.message_blocks) + [
            messages.outcome_block(messages.decided_text(click.decision, who, comment=click.reason))]
        try:
            self.slack.chat_update(channel=click.channel_id, ts=click.message_ts, blocks=blocks,
                                   text=f"{request.gate} {click.decision} by {approver}")
        except SlackClientError as e:  # the decision stands; only the message is stale
            log.error("could not update the request message: %s", e,
                      extra={"fields": {"event": "slack_error", "run_id": request.run_id}})

    def _tell(self, click: Click, text: str) -> None:
        try:
            self.slack.chat_postEphemeral(channel=click.channel_id, user=click.user_id, text=text)
        except SlackClientError as e:
            log.error("could not reply to %s: %s", click.user_id, e,
                      extra={"fields": {"event": "slack_error"}})

    # -- recording ----------------------------------------------------------------------------------

    def _refuse(self, click: Click, request: GateRequest | None, verified_by: str, reason: str) -> Outcome:
        self._record(click, request, verified_by, "refused", reason)
        return Outcome(200, False, reason)

    def _record(self, click: Click, request: GateRequest | None, verified_by: str, outcome: str,
                reason: str, **decision):
        log.log(logging.INFO if outcome == "accepted" else logging.WARNING, "click %s: %s%s",
                click.action, outcome, f" ({reason})" if reason else "",
                extra={"fields": {"event": "attempt", "outcome": outcome, "reason": reason,
                                  "action": click.action, "slack_user": click.user_id,
                                  "slack_team": click.team_id, "slack_channel": click.channel_id,
                                  "run_id": request.run_id if request else None,
                                  "gate": request.gate if request else None, "verified_by": verified_by}})
        return self.audit.record_approval_attempt(
            action=click.action, outcome=outcome, reason=reason,
            run_id=request.run_id if request else "", gate=request.gate if request else "",
            flow_run_id=request.flow_run_id if request else "", slack_user_id=click.user_id,
            slack_user_name=click.user_name, slack_team_id=click.team_id, slack_channel_id=click.channel_id,
            message_ts=click.message_ts, identity_verified=bool(verified_by), verified_by=verified_by,
            **decision)

    def _record_unverified(self, payload: Mapping | None, problem: str) -> None:
        """A request that failed verification: record what it claimed, trusted as nothing."""
        click = Click.from_payload(payload) if payload else None
        if click is None:
            click = Click(action="unknown", value="")
        try:
            request = GateRequest.decode(click.value)
        except ValueError:
            request = None
        self._record(click, request, "", "refused", f"not verified: {problem}")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry |= getattr(record, "fields", None) or {}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Structured logs on stderr for the service (and uvicorn's own loggers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    for name in ("baton", "uvicorn", "uvicorn.error", "uvicorn.access", "slack_sdk"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level if name != "slack_sdk" else logging.WARNING)
