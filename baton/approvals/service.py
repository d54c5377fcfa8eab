"""The approval service: Slack's interactivity endpoint (HTTP) and Socket Mode, one handler.

A click is a security decision. In order, a click is refused (and recorded, and nothing else
happens) when: the request is not signed by Slack or is older than 5 minutes (HTTP 401); the
user is not an approver; the run is unknown or finished; the two-person rule forbids it (the
person who started the run cannot approve it; rejecting, which only stops the run, is
allowed); a rejection has no reason; the gate was already decided or timed out; or the flow
run is not paused at that gate, or is not the flow run the audit DB records as asking that
gate of that run. Otherwise the decision is recorded (approvals row, channel slack, identity
verified) and the flow run is resumed with it as the run input; the gate checks that row
before it trusts the input. The message then shows who decided, when and what, without
buttons. The decision is a compare-and-set in the audit DB (one per run and gate), so any
number of service replicas count one click and refuse the rest.

Nothing from a request's body is parsed before its size (64 KiB) and signature are checked;
an unverified request is recorded with every field bounded, a few per source and minute.
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
from baton.approvals.policy import claimed_name
from baton.approvals.prefect_api import PrefectRuns, PrefectUnavailable
from baton.approvals.requests import REASON_INPUT, ActionId, BlockId, GateRequest
from baton.approvals.slack import web_client
from baton.audit import AuditStore
from baton.errors import AlreadyDecided, UsageError

log = logging.getLogger("baton.approvals")

MAX_REQUEST_AGE_SECONDS = 300  # Slack's advice: refuse older requests (replay)
MAX_BODY_BYTES = 64 * 1024  # a Slack interaction is a few KiB; larger bodies are refused unread
GROUP_CACHE_SECONDS = 60


class MalformedPayload(ValueError):
    """An interactive payload whose shape is not Slack's: names the field that is wrong."""


def _mapping(value, where: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedPayload(f"{where} is a {type(value).__name__}, not an object")
    return value


def _list(value, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where} is a {type(value).__name__}, not a list")
    return value


def _text(value, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedPayload(f"{where} is a {type(value).__name__}, not a string")
    return str(value)


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
    def from_payload(cls, payload) -> Click | None:
        """The click in a block_actions payload, or None if it is not one of our buttons.
        Total: any other shape raises MalformedPayload naming the wrong field."""
        payload = _mapping(payload, "the payload")
        if payload.get("type") != "block_actions":
            return None
        actions = [_mapping(a, f"actions[{i}]")
                   for i, a in enumerate(_list(payload.get("actions"), "actions"))]
        ours = [a for a in actions if _text(a.get("action_id"), "actions[].action_id") in set(ActionId)]
        if not ours:
            return None
        user = _mapping(payload.get("user"), "user")
        message = _mapping(payload.get("message"), "message")
        container = _mapping(payload.get("container"), "container")
        values = _mapping(_mapping(payload.get("state"), "state").get("values"), "state.values")
        block = _mapping(values.get(BlockId.REASON), f"state.values.{BlockId.REASON}")
        box = _mapping(block.get(REASON_INPUT), f"state.values.{BlockId.REASON}.{REASON_INPUT}")
        channel = (_text(_mapping(payload.get("channel"), "channel").get("id"), "channel.id")
                   or _text(container.get("channel_id"), "container.channel_id"))
        blocks = [_mapping(b, f"message.blocks[{i}]")
                  for i, b in enumerate(_list(message.get("blocks"), "message.blocks"))]
        return cls(action=_text(ours[0]["action_id"], "action_id"),
                   value=_text(ours[0].get("value"), "actions[].value"),
                   user_id=_text(user.get("id"), "user.id"),
                   user_name=_text(user.get("username") or user.get("name"), "user.username"),
                   team_id=(_text(_mapping(payload.get("team"), "team").get("id"), "team.id")
                            or _text(user.get("team_id"), "user.team_id")),
                   channel_id=channel,
                   message_ts=(_text(message.get("ts"), "message.ts")
                               or _text(container.get("message_ts"), "container.message_ts")),
                   message_blocks=[dict(b) for b in blocks],
                   reason=_text(box.get("value"), "the reason").strip())

    @classmethod
    def claimed(cls, payload) -> Click:
        """What an unverified request claims, as far as its shape allows (trusted as nothing)."""
        try:
            return cls.from_payload(payload) or cls(action="unknown", value="")
        except MalformedPayload:
            return cls(action="unknown", value="")

    @property
    def decision(self) -> str:
        return "approved" if self.action == ActionId.APPROVE else "rejected"


class UnverifiedLimiter:
    """Per source, at most `limit` unverified requests are recorded one by one per `window`
    seconds; the rest are counted and recorded as one summary, so a flood cannot fill the
    append-only audit chain."""

    def __init__(self, limit: int = 10, window: float = 60.0, clock=time.monotonic, max_sources: int = 10000):
        self.limit, self.window, self.clock, self.max_sources = limit, window, clock, max_sources
        self._sources: dict[str, list] = {}  # source -> [window start, recorded, suppressed]
        self._lock = threading.Lock()

    def admit(self, source: str) -> tuple[bool, str | None]:
        """(record this request?, a summary to record first, if any)."""
        now = self.clock()
        with self._lock:
            entry = self._sources.get(source)
            summary = None
            if entry is None or now - entry[0] > self.window:
                if entry is not None and entry[2]:
                    summary = (f"{entry[2]} more unverified requests from {source} within "
                               f"{self.window:.0f} s were refused and not stored one by one")
                if entry is None and len(self._sources) >= self.max_sources:
                    self._sources = {k: v for k, v in self._sources.items() if now - v[0] <= self.window}
                entry = self._sources[source] = [now, 0, 0]
            if entry[1] < self.limit:
                entry[1] += 1
                return True, summary
            entry[2] += 1
            if entry[2] == 1:
                summary = (f"rate limit: more than {self.limit} unverified requests from {source} "
                           f"within {self.window:.0f} s; the rest are counted, not stored")
            return False, summary


@dataclass
class Outcome:
    """What became of a request: the HTTP status to answer and whether the click counted."""

    status_code: int
    accepted: bool
    reason: str


def form_payload(body: bytes):
    """The JSON `payload` field of Slack's form-encoded interactive request (any JSON value),
    or None when there is none."""
    try:
        value = parse_qs(body.decode("utf-8")).get("payload", [None])[0]
        return json.loads(value) if value else None
    except (UnicodeDecodeError, ValueError, RecursionError):
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
        self.unverified = UnverifiedLimiter()

    # -- transports ---------------------------------------------------------------------------

    def handle_http(self, body: bytes, headers: Mapping[str, str], source: str = "?") -> Outcome:
        """A POST from Slack's interactivity: size, then signature and age, before the body is
        parsed; `source` is the client address (rate limit of unverified requests)."""
        if len(body) > MAX_BODY_BYTES:
            return Outcome(413, False, f"request body over {MAX_BODY_BYTES} bytes")
        headers = {str(k).lower(): v for k, v in headers.items()}
        problem = self._signature_problem(body, headers)
        if problem:
            self._record_unverified(body, problem, source)
            return Outcome(401, False, problem)
        payload = form_payload(body)
        if payload is None:
            return Outcome(400, False, "no interactive payload in the request (a form field "
                                       "`payload` holding JSON)")
        return self.handle_payload(payload, verified_by="signature")

    def handle_payload(self, payload, *, verified_by: str) -> Outcome:
        """An interactive payload whose origin is verified (signature, or the Socket Mode link)."""
        try:
            click = Click.from_payload(payload)
        except MalformedPayload as e:
            reason = f"malformed interactive payload: {e}"
            self._record(Click(action="unknown", value=""), None, verified_by, "refused", reason)
            return Outcome(400, False, reason)
        if click is None:
            log.info("ignored an interaction that is not a Baton button", extra={"fields": {
                "event": "ignored", "type": str(payload.get("type"))[:40]}})
            return Outcome(200, False, "not a Baton approval action")
        with self._lock:  # within a process; across replicas the audit DB's compare-and-set decides
            outcome = self._decide(click, verified_by)
        if not outcome.accepted and click.user_id and click.channel_id:
            self._tell(click, messages.escape(f"Not accepted: {outcome.reason}. Nothing was changed."))
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
        # An unverified starter is matched by the name they claimed (they may still be anyone:
        # the gate then accepts only verified approvals, see baton/approvals/policy.py).
        names = {self.settings.operators.get(click.user_id), click.user_name, click.user_id}
        return claimed_name(started_by).casefold() in {n.casefold() for n in names if n}

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
        slot = self.audit.gate_slot(request.run_id, request.gate)
        if slot is None:
            return self._refuse(click, request, verified_by,
                                f"no flow run is recorded as asking {request.gate} of run {request.run_id}")
        if slot.flow_run_id != request.flow_run_id:
            return self._refuse(click, request, verified_by,
                                f"the button names flow run {request.flow_run_id}, but {request.gate} of run "
                                f"{request.run_id} is asked by flow run {slot.flow_run_id}")
        if slot.approval_id is not None:
            return self._refuse(click, request, verified_by, self._already(request))
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

    def _already(self, request: GateRequest) -> str:
        slot = self.audit.gate_slot(request.run_id, request.gate)
        first = next((a for a in self.audit.run(request.run_id).approvals
                      if slot is not None and a.id == slot.approval_id), None)
        if first is None:
            return f"{request.gate} was already decided"
        return f"already {first.decision} by {first.approver} at {first.decided_at:%H:%M:%S} UTC"

    def _accept(self, click: Click, request: GateRequest, verified_by: str) -> Outcome:
        approver = self._approver_name(click)
        try:
            attempt = self._record(click, request, verified_by, "accepted", "", decision=click.decision,
                                   approver=approver, comment=click.reason)
        except AlreadyDecided:  # another click (or another replica) took the gate's one decision
            return self._refuse(click, request, verified_by, self._already(request))
        # decision + reason: the form's fields; the rest is checked by the gate against the audit DB
        run_input = {"decision": "approve" if click.action == ActionId.APPROVE else "reject",
                     "reason": click.reason, "approver": approver, "channel": "slack",
                     "approval_id": attempt.approval_id}
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
        who = messages.mention(click.user_id, approver)
        blocks = messages.without_buttons(click.message_blocks) + [
            messages.outcome_block(messages.decided_text(click.decision, who, comment=click.reason))]
        try:
            self.slack.chat_update(channel=click.channel_id, ts=click.message_ts, blocks=blocks,
                                   text=messages.escape(f"{request.gate} {click.decision} by {approver}"))
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

    def _record_unverified(self, body: bytes, problem: str, source: str) -> None:
        """A request that failed verification: record what it claimed, trusted as nothing,
        each field bounded, at most a few per source and minute (then a summary)."""
        admitted, summary = self.unverified.admit(source)
        if summary:
            self._record(Click(action="unknown", value=""), None, "", "refused", f"not verified: {summary}")
        if not admitted:
            log.warning("unverified request from %s not stored (rate limit): %s", source, problem,
                        extra={"fields": {"event": "attempt", "outcome": "refused", "source": source}})
            return
        click = Click.claimed(form_payload(body))
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
