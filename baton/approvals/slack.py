"""Posting approval requests to Slack and keeping the message current (slack-sdk WebClient).

The notifier runs inside the flow run; it never decides anything. Slack being unreachable
must not break a gate: the failure is logged and the gate keeps waiting (the Prefect UI, or
a retried post, can still answer it).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

from baton.approvals import messages
from baton.approvals.requests import GateRequest
from baton.errors import ConfigError
from baton.settings import ApprovalSettings

log = logging.getLogger("baton.approvals")


def web_client(settings: ApprovalSettings, token: str | None = None) -> WebClient:
    """A WebClient on the configured API URL with the bot token (or the given one)."""
    if token is None:
        if settings.slack_bot_token is None:
            raise ConfigError("approvals.slack_bot_token is not set (BATON_APPROVALS__SLACK_BOT_TOKEN)")
        token = settings.slack_bot_token.get_secret_value()
    return WebClient(token=token, base_url=settings.slack_api_url, timeout=10)


def run_url(settings: ApprovalSettings, flow_run_id: str) -> str:
    return f"{settings.resolved_prefect_ui_url()}/runs/flow-run/{flow_run_id}"


def reminder_delay(settings: ApprovalSettings, timeout_seconds: float) -> float:
    """Seconds after the request at which the reminder goes out."""
    lead = settings.reminder_before_seconds
    return timeout_seconds - lead if timeout_seconds > lead else timeout_seconds / 2


@dataclass
class PostedRequest:
    """The handle of one posted request message."""

    channel: str
    ts: str
    request: GateRequest
    blocks: list[dict] = field(default_factory=list)


class SlackNotifier:
    """Posts a run's approval requests and updates them (reminder, timeout, compensation)."""

    def __init__(self, settings: ApprovalSettings, *, flow_run_id: str, client: WebClient | None = None):
        self.settings = settings
        self.flow_run_id = flow_run_id
        self.client = client or web_client(settings)
        self.last: PostedRequest | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_topology(cls, topology, *, flow_run_id: str | None) -> SlackNotifier | None:
        """A notifier when Slack approvals are configured and we run inside a flow run, else None."""
        if not topology.approvals.slack_enabled or not flow_run_id:
            return None
        return cls(topology.approvals, flow_run_id=flow_run_id)

    def reminder_delay(self, timeout_seconds: float) -> float:
        return reminder_delay(self.settings, timeout_seconds)

    def _call(self, what: str, method, **arguments):
        try:
            return method(**arguments)
        except SlackClientError as e:  # includes SlackApiError; its text never holds the token
            log.error("slack %s failed: %s", what, e, extra={"event": "slack_error", "call": what})
            return None

    def post_request(self, ctx, step, summary: dict) -> PostedRequest | None:
        """Post the request for this gate to the channel; None if Slack did not take it."""
        # Named as the summary names it: an evacuation's batch gate is asked on its first domain's
        # run, but the approver decides for the evacuation and every domain of it.
        request = GateRequest(run_id=ctx.run_id, gate=step.name, flow_run_id=self.flow_run_id,
                              domain=summary.get("domain") or ctx.domain,
                              runbook=summary.get("runbook") or ctx.runbook)
        blocks = messages.request_blocks(request, summary, run_url(self.settings, self.flow_run_id))
        response = self._call("chat.postMessage", self.client.chat_postMessage,
                              channel=self.settings.slack_channel, text=messages.request_text(request),
                              blocks=blocks, unfurl_links=False)
        if response is None:
            ctx.log(f"gate {step.name}: could not post the approval request to Slack; see the logs")
            return None
        posted = PostedRequest(channel=response["channel"], ts=response["ts"], request=request,
                               blocks=blocks)
        with self._lock:
            self.last = posted
        ctx.log(f"gate {step.name}: approval request posted to Slack ({posted.channel} {posted.ts})")
        return posted

    def remind(self, message: PostedRequest | None, ctx, step, seconds_left: float) -> None:
        """A reminder in the request's thread."""
        if message is None:
            return
        self._call("chat.postMessage (reminder)", self.client.chat_postMessage, channel=message.channel,
                   thread_ts=message.ts, text=messages.reminder_text(step.name, seconds_left))

    def _replace_buttons(self, message: PostedRequest, text: str, fallback: str) -> None:
        with self._lock:
            message.blocks = messages.without_buttons(message.blocks) + [messages.outcome_block(text)]
            blocks = list(message.blocks)
        self._call("chat.update", self.client.chat_update, channel=message.channel, ts=message.ts,
                   text=fallback, blocks=blocks)

    def mark_timed_out(self, message: PostedRequest | None, ctx, step) -> None:
        if message is None:
            return
        timeout = ctx.topology.thresholds.gate_timeout_seconds
        self._replace_buttons(message, messages.timed_out_text(timeout), f"{step.name} timed out")

    def mark_answered(self, message: PostedRequest | None, ctx, step, decision: str, approver: str,
                      comment: str = "", channel: str = "prefect-ui") -> None:
        """The gate got its decision. From the Prefect UI: the buttons go and the outcome shows.
        From Slack: the approval service already updated the message; only our copy follows."""
        if message is None:
            return
        who = messages.escape(approver)
        if channel == "slack":
            with self._lock:
                message.blocks = messages.without_buttons(message.blocks) + [
                    messages.outcome_block(messages.decided_text(decision, who, comment=comment))]
            return
        text = messages.decided_text(decision, who, comment=comment,
                                     channel="the Prefect UI (identity not verified)")
        self._replace_buttons(message, text, messages.escape(f"{step.name} {decision} by {approver}"))

    def mark_compensated(self, ctx) -> None:
        """After the runner compensated a failed run: say what it did under the last request."""
        message = self.last
        if message is None:
            return
        compensation = ctx.state.get("compensation", {})
        with self._lock:
            # keep the decision or timeout line; add the compensation below it
            message.blocks = [b for b in message.blocks if b.get("block_id") != "baton.compensation"]
            message.blocks.append({"type": "section", "block_id": "baton.compensation",
                                   "text": {"type": "mrkdwn",
                                            "text": messages.compensation_text(compensation)[:3000]}})
            blocks = list(message.blocks)
        self._call("chat.update (compensation)", self.client.chat_update, channel=message.channel,
                   ts=message.ts, text=f"{message.request.gate}: compensation ran", blocks=blocks)
