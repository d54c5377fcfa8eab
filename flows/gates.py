"""Approval gates: pause the flow run until someone decides, and record who did.

A gate pauses with `pause_flow_run(wait_for_input=GateDecision)`, so the Prefect UI shows
an approval form. The Slack approval service resumes the same pause after verifying the
click's signature; it records the verified approval first and says so in the input
(`channel="slack"`, `approval_id`), which the gate checks against the audit database.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import httpx
from prefect.exceptions import FlowPauseTimeout, PrefectHTTPStatusError
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import ConfigDict, Field

from baton.approvals.policy import is_unverified, may_auto_approve
from baton.audit.models import Approval, GateDecisionSlot
from baton.errors import ApprovalRejected, StepFailed
from baton.steps import resolution
from baton.steps.context import RunContext
from runbooks.model import Step

MAX_REASON = 2000
# How often a paused gate reads its flow run from the Prefect API: an answer is acted on within
# this long. An unplanned run waits at approve-switch inside the fenced window, so each second
# here is a second of write outage; one GET per second per paused run is negligible.
GATE_POLL_SECONDS = 1.0


class GateDecision(RunInput):
    """The decision a person takes at a gate: approve or reject, and why.

    The Prefect UI shows exactly these two fields, below the gate's evidence (the form's
    description). The Slack approval service resumes the same pause with extra fields
    (`channel="slack"`, `approval_id`, `approver`), which the gate checks against the audit
    database; a name sent through the API is a claim, recorded as an unverified identity.
    """

    model_config = ConfigDict(
        extra="allow",
        # The server refuses a rejection without a reason, as the Slack service does.
        json_schema_extra={"if": {"properties": {"decision": {"const": "reject"}}},
                           "then": {"required": ["reason"],
                                    "properties": {"reason": {"pattern": "\\S"}}}})

    # No default: submitting the form without choosing decides nothing.
    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="approve: run the steps this gate guards; reject: return to "
                                      "the last safe state (see above)")
    reason: str = Field("", max_length=MAX_REASON, title="Reason",
                        description="Why you decide so (required to reject)")

    def _extra(self, name: str, default=None):
        return (self.model_extra or {}).get(name, default)

    @property
    def approved(self) -> bool:
        return self.decision == "approve"

    @property
    def comment(self) -> str:
        return self.reason

    @property
    def approver(self) -> str:
        claimed = " ".join(str(self._extra("approver") or "").split())[:200]
        return claimed or "prefect-ui user"

    @property
    def channel(self) -> str:
        return str(self._extra("channel", "prefect-ui"))

    @property
    def approval_id(self) -> int | None:
        value = self._extra("approval_id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class ResolutionDecision(GateDecision):
    """The decision at gate approve-translation-resolutions: approve with a choice per refused group."""

    choices: str = Field("", max_length=MAX_REASON, title="Choices per group",
                         description="one `group=choice` per group listed above (checkpoint, "
                                     "earliest or latest, as offered), separated by spaces")


def _choices_text(decision: GateDecision) -> str:
    """The choices an answer carries: the form's field, else (Slack) the reason box."""
    return str(getattr(decision, "choices", "") or decision._extra("choices") or decision.reason)


def _line(label: str, value) -> str:
    from flows.runner import escape_markdown  # imported late: the runner imports this module

    return f"- **{label}**: {escape_markdown(value)}"


def decision_form(step: Step, summary: dict) -> type[GateDecision]:
    """The pause form for this gate, its description carrying the evidence (Markdown)."""
    planned = not summary.get("unplanned")
    fenced = step.name not in ("approve-failover", "approve-failback", "approve-discard")
    lines = [f"## Gate `{step.name}` of {summary.get('runbook', '?')} `{summary.get('domain', '?')}`",
             "", step.summary, "",
             _line("planned authority change", summary.get("planned_change", "?")),
             _line("authority now", summary.get("authority_now", "?")),
             _line("lag", summary.get("lag") or "not measured yet"),
             _line("records at risk", summary.get("data_at_risk_records",
                                                  "0 required once fenced" if planned else "unknown")),
             _line("readiness", summary.get("readiness") or "not available"),
             _line("currency", summary.get("currency") or "verified after the fence"),
             _line("translations", _translations(summary))]
    if summary.get("switch_conditions"):
        lines.append(_line("approves the switch only if", "; ".join(summary["switch_conditions"])))
    if summary.get("domains"):  # an evacuation: the one decision covers every domain listed
        from flows.runner import escape_markdown

        lines += ["", f"**Evacuation {escape_markdown(summary.get('evacuation', ''))}**: one decision "
                      "for every domain below, recorded on each domain's run:"]
        lines += [f"- {escape_markdown(line)}" for line in summary["domains"]]
        lines += [f"- failed: {escape_markdown(line)}" for line in summary.get("failed_domains", [])]
    if summary.get("divergent_records") is not None:
        lines.append(_line("divergent records", f"{summary['divergent_records']} "
                                                f"(policy {summary.get('divergent_policy')})"))
    lines.append(_line("started by", f"{summary.get('started_by', '?')}"
                                     + (f", reason: {summary['reason']}" if summary.get("reason") else "")))
    reject = ("nothing was changed yet: the run stops, authority and replication stay as they are"
              if not fenced else "the old owner is unfenced and gets authority back (ACTIVE, new "
              "epoch); replication this run stopped is restarted")
    if step.name == resolution.GATE:
        from flows.runner import escape_markdown

        lines += ["", "**Not translated** (nothing is applied, nothing switches until you choose):"]
        lines += [f"- {escape_markdown(line)}" for line in summary.get("refused_translations", [])]
        lines += ["", "**Choose per group** (write `group=choice` in Choices):"]
        lines += [f"- {escape_markdown(group)}: {', '.join(choices)}"
                  for group, choices in summary.get("resolution_options", {}).items()]
    lines += ["", f"**Rejecting**: {reject}. A rejection needs a reason. Your identity is not "
                  "verified here; it is recorded as unverified (Slack answers are verified)."]
    form = ResolutionDecision if step.name == resolution.GATE else GateDecision
    return form.with_initial_data(description="\n".join(lines))


def _translations(summary: dict) -> str:
    translation = summary.get("translation")
    if not translation:
        return "computed after the fence, every group exactly (planned)" if not summary.get(
            "unplanned") else "not computed yet"
    return (f"{translation.get('groups')} group(s), {translation.get('partitions')} partition(s), "
            f"methods {', '.join(translation.get('methods', []))}, duplicates bound "
            f"{translation.get('duplicates_bound')}, missing {translation.get('missing')}")


def _verified_slack_approval(ctx: RunContext, gate: str, decision: GateDecision) -> Approval | None:
    if decision.channel != "slack" or decision.approval_id is None:
        return None
    with ctx.audit.transaction() as session:
        row = session.get(Approval, decision.approval_id)
        expected = "approved" if decision.approved else "rejected"
        # ... and it is the gate's one decision (claimed by compare-and-set, not voided since)
        slot = session.get(GateDecisionSlot, (ctx.run_id, gate))
        if (row is not None and row.run_id == ctx.run_id and row.gate == gate and row.decision == expected
                and row.channel == "slack" and row.identity_verified
                and slot is not None and slot.approval_id == row.id):
            session.expunge(row)
            return row
    return None


def request_approval(ctx: RunContext, step: Step, summary: dict, *, auto_approve: bool,
                     poll_seconds: float = GATE_POLL_SECONDS, notifier=None, key_suffix: str = "") -> dict:
    """Block until the gate is approved; raise ApprovalRejected on rejection or timeout.

    The notifier (baton.approvals.slack.SlackNotifier, or None) posts the request, a reminder
    before the timeout, and keeps the message current."""
    gate = step.name
    # The topology's policy, not the flag alone (the runner refused a disallowed run already).
    offered = summary.get("resolution_options") if gate == resolution.GATE else None
    if auto_approve and may_auto_approve(ctx.topology, gate):
        answer = {"gate": gate, "decision": "approved", "approver": ctx.operator, "channel": "cli"}
        comment = "answered by --yes"
        if offered is not None:
            answer |= {"choices": resolution.auto_choices(offered), "chosen_by": f"auto ({ctx.operator})"}
            comment += ": " + " ".join(f"{g}={c}" for g, c in answer["choices"].items())
        ctx.audit.record_approval(ctx.run_id, gate, "approved", ctx.operator, channel="cli",
                                  comment=comment)
        return answer

    timeout = ctx.topology.thresholds.gate_timeout_seconds
    deadline = time.monotonic() + timeout
    # An unverified starter could be anyone, the approver included: where Slack can verify an
    # approver, only Slack-verified answers count (without Slack every answer is unverified anyway).
    slack_only = gate in ctx.topology.approvals.require_slack_for or (
        is_unverified(ctx.operator) and ctx.topology.approvals.slack_enabled)
    _open_gate(ctx, gate)
    message = notifier.post_request(ctx, step, summary) if notifier else None
    reminder = _schedule_reminder(notifier, message, ctx, step, deadline, timeout)
    try:
        return _wait_for_decision(ctx, step, gate, deadline, timeout, slack_only, poll_seconds,
                                  notifier, message, form=decision_form(step, summary), offered=offered,
                                  key_suffix=key_suffix)
    finally:
        if reminder is not None:
            reminder.cancel()


def _open_gate(ctx: RunContext, gate: str) -> None:
    """Record which flow run asks this gate: the approval service resumes only that one."""
    from prefect.runtime import flow_run

    if flow_run.id:
        ctx.audit.open_gate(ctx.run_id, gate, str(flow_run.id))


def _schedule_reminder(notifier, message, ctx: RunContext, step: Step, deadline: float,
                       timeout: float) -> threading.Timer | None:
    """A reminder in the request's thread before the gate times out (cancelled once decided)."""
    if notifier is None or message is None:
        return None
    delay = notifier.reminder_delay(timeout)
    timer = threading.Timer(delay, lambda: notifier.remind(message, ctx, step, deadline - time.monotonic()))
    timer.daemon = True
    timer.start()
    return timer


# What the Prefect client raises once its own retries are spent: the API is down or failing.
API_ERRORS = (httpx.HTTPError, PrefectHTTPStatusError, OSError)


def _decision_after_outage(ctx: RunContext, gate: str, key: str, deadline: float,
                           poll_seconds: float, form: type[GateDecision]) -> GateDecision | None:
    """The Prefect API failed while the gate waited: keep waiting for the same pause until the
    gate's own deadline, however long the API is away. None: the pause never reached the server
    (pause again); FlowPauseTimeout at the deadline."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.input.run_input import keyset_from_base_key
    from prefect.runtime import flow_run

    last_note = 0.0
    while time.monotonic() < deadline:
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(flow_run.id).state
            if state is not None and state.is_running():
                try:  # resumed while we could not look: the answer is stored under this pause's key
                    return form.load(keyset_from_base_key(f"paused-{key}"))
                except ObjectNotFound:
                    return None
            if state is None or not state.is_paused():
                return None
        except API_ERRORS as e:
            if time.monotonic() - last_note > 15:
                ctx.log(f"gate {gate}: the Prefect API does not answer ({type(e).__name__}); still waiting "
                        f"for a decision ({deadline - time.monotonic():.0f} s left)")
                last_note = time.monotonic()
        time.sleep(max(0.5, min(poll_seconds, deadline - time.monotonic())))
    raise FlowPauseTimeout("the gate's timeout passed while the Prefect API was unavailable")


def _refuse_if_returned(ctx: RunContext, gate: str, decision: GateDecision, channel: str) -> None:
    """A decision that arrives after the run was returned to its last safe state (by `baton
    recover` or `authority unlock` while this flow waited) is recorded as refused, not applied."""
    from baton.steps.recover import RECOVERY_STEPS

    view = ctx.audit.run(ctx.run_id)
    recovered = [s for s in view.steps if s.name in RECOVERY_STEPS]
    if view.status == "running" and not recovered:
        return
    why = (f"run {ctx.run_id} is {view.status}" + (f" and was returned to its last safe state by "
           f"`{recovered[-1].name}` at {recovered[-1].ended_at:%H:%M:%S} UTC" if recovered else ""))
    ctx.audit.record_approval(ctx.run_id, gate, "refused", decision.approver, channel=channel,
                              comment=f"refused: arrived after {why}; nothing was applied")
    raise StepFailed(f"gate {gate}: the answer of {decision.approver} arrived after {why}; it was recorded "
                     "as refused and nothing was applied. Start a new run if the hand-over is still wanted.")


def _wait_for_decision(ctx: RunContext, step: Step, gate: str, deadline: float, timeout: float,
                       slack_only: bool, poll_seconds: float, notifier, message,
                       form: type[GateDecision] = GateDecision, offered: dict | None = None,
                       key_suffix: str = "") -> dict:
    attempt = 0
    while True:
        attempt += 1
        remaining = int(deadline - time.monotonic())
        ctx.log(f"gate {gate}: waiting for approval ({remaining} s left)")
        key = f"{gate}-{attempt}{key_suffix}"  # a suffix: one flow run asking a gate per domain
        try:
            if remaining < 1:
                raise FlowPauseTimeout("no time left")
            try:
                decision = pause_flow_run(wait_for_input=form, timeout=remaining,
                                          poll_interval=poll_seconds, key=key)
            except API_ERRORS as e:
                ctx.log(f"gate {gate}: the Prefect API failed ({type(e).__name__}: {e}); the gate keeps "
                        "waiting until its own timeout")
                decision = _decision_after_outage(ctx, gate, key, deadline, poll_seconds, form)
                if decision is None:
                    continue  # the pause itself was lost: ask again
        except FlowPauseTimeout:
            ctx.audit.record_approval(ctx.run_id, gate, "timed_out", "-", channel="timeout",
                                      comment=f"no decision within {timeout:.0f} s")
            if notifier and message:
                notifier.mark_timed_out(message, ctx, step)
            raise ApprovalRejected(f"gate {gate} timed out after {timeout:.0f} s without a decision"
                                   ) from None
        verified = _verified_slack_approval(ctx, gate, decision)
        _refuse_if_returned(ctx, gate, decision, "slack" if verified else "prefect-ui")
        choices: dict[str, str] = {}
        if offered is not None and decision.approved:
            choices, problems = resolution.parse_choices(_choices_text(decision), offered)
            if problems:  # an approval must say what it approves: nothing is guessed
                why = "refused: the approval chose no valid resolution: " + "; ".join(problems)
                ctx.audit.record_approval(ctx.run_id, gate, "refused", decision.approver,
                                          channel="slack" if verified else "prefect-ui", comment=why)
                if verified is not None:  # Slack's one decision per gate is spent: stop safely
                    raise ApprovalRejected(f"gate {gate}: {why}")
                ctx.log(f"gate {gate}: {why}; still waiting")
                continue
        if verified is None:
            if slack_only:
                ctx.audit.record_approval(
                    ctx.run_id, gate, "refused", decision.approver, channel="prefect-ui",
                    comment="refused: this gate requires a Slack-verified approval; still waiting")
                ctx.log(f"gate {gate}: a Prefect UI answer is not accepted here; waiting for Slack")
                continue
            chosen = " ".join(f"{g}={c}" for g, c in choices.items())
            ctx.audit.record_approval(ctx.run_id, gate,
                                      "approved" if decision.approved else "rejected",
                                      decision.approver, channel="prefect-ui",
                                      comment=f"{decision.comment} [chose {chosen}]".strip()
                                      if chosen else decision.comment)
        if notifier and message:
            notifier.mark_answered(message, ctx, step, "approved" if decision.approved else "rejected",
                                   decision.approver, decision.comment,
                                   channel="slack" if verified else "prefect-ui")
        if decision.approved:
            ctx.log(f"gate {gate}: approved by {decision.approver}")
            answer = {"gate": gate, "decision": "approved", "approver": decision.approver,
                      "channel": "slack" if verified else "prefect-ui"}
            if offered is not None:
                # who chose, and how far that identity is proven (as the approvals table says)
                answer |= {"choices": choices, "chosen_by": f"{decision.approver} ("
                           + ("slack, verified)" if verified else "prefect-ui, unverified)")}
            return answer
        raise ApprovalRejected(f"gate {gate} rejected by {decision.approver}: "
                               f"{decision.comment or 'no reason given'}")
