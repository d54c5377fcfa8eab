"""Block Kit for approval requests: the evidence, the buttons, and the message after a decision.

Every message keeps the evidence blocks it was posted with; a decision, a timeout or a
compensation replaces only the buttons with what happened.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from baton.approvals.requests import REASON_INPUT, ActionId, BlockId, GateRequest

EVIDENCE_FIELDS = (  # (summary key, label) in the order an approver reads them
    ("runbook", "Runbook"), ("evacuation", "Evacuation"), ("domain", "Domain"), ("gate", "Gate"),
    ("started_by", "Started by"),
    ("planned_change", "Planned authority change"), ("authority_now", "Authority now"),
    ("lag", "Lag"), ("data_at_risk_records", "Records at risk"), ("currency", "Currency"),
    ("readiness", "Readiness"),
    ("translation", "Consumer groups translated"), ("divergent_records", "Divergent records"),
    ("divergent_policy", "Divergent policy"), ("reason", "Reason"),
    ("refused_translations", "Not translated"),
    # approve-translation-resolutions: the approver writes `group=choice` per group in the reason box
    ("resolution_options", "Choose per group (write group=choice in the reason)"),
)


def escape(text: object) -> str:
    """Text shown literally in Slack mrkdwn: `&`, `<` and `>` escaped, so `<!channel>` or
    `<https://...|label>` in a reason can neither ping a channel nor disguise a link."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(user_id: str, name: str) -> str:
    """`<@U...> (name)` for a real Slack user id; otherwise both shown literally."""
    if re.fullmatch(r"[UW][A-Z0-9]{2,}", user_id or ""):
        return f"<@{user_id}> ({escape(name)})"
    return escape(f"{user_id} ({name})")


def _text(value) -> str:
    if isinstance(value, dict):
        if {"groups", "methods"} <= value.keys():  # the translation summary
            text = (f"{value['groups']} groups, {value.get('partitions', '?')} partitions, "
                    f"methods {', '.join(value['methods']) or '-'}")
            extra = [f"{key} {value[key]}" for key in ("duplicates_bound", "missing") if value.get(key)]
            return text + (f" ({', '.join(extra)})" if extra else "")
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def evidence_lines(summary: dict) -> list[str]:
    """`*Label*: value` for every piece of evidence present in a gate summary."""
    lines = []
    for key, label in EVIDENCE_FIELDS:
        value = summary.get(key)
        if value is None or value == "":
            continue
        lines.append(f"*{label}*: {escape(_text(value)[:500])}")
    if summary.get("unplanned"):
        lines.append("*Unplanned*: the owner was declared unavailable")
    # an evacuation: one line of evidence per domain of the batch, and who dropped out
    lines += [f"• {escape(line[:400])}" for line in summary.get("domains", [])]
    lines += [f"• *failed*: {escape(line[:300])}" for line in summary.get("failed_domains", [])]
    return lines


def request_blocks(request: GateRequest, summary: dict, run_url: str) -> list[dict]:
    """The approval request: evidence, a link to the run, a reason box and Approve/Reject."""
    title = f"Approval needed: {request.gate} ({request.runbook} of {request.domain})"
    sections = _chunks(evidence_lines(summary))
    return [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "block_id": BlockId.EVIDENCE, "text": {"type": "mrkdwn", "text": sections[0]}},
        # an evacuation's domains go on in further sections (Slack takes 3000 characters in one)
        *({"type": "section", "text": {"type": "mrkdwn", "text": text}} for text in sections[1:10]),
        {"type": "context", "elements": [
            {"type": "mrkdwn",
             "text": f"Run `{escape(request.run_id)}` · <{escape(run_url)}|flow run in Prefect>"}]},
        {"type": "input", "block_id": BlockId.REASON, "optional": True,
         "label": {"type": "plain_text", "text": "Reason (required to reject)"},
         "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": False}},
        {"type": "actions", "block_id": BlockId.ACTIONS, "elements": [
            {"type": "button", "action_id": ActionId.APPROVE, "style": "primary",
             "text": {"type": "plain_text", "text": "Approve"}, "value": request.encode(),
             "confirm": {"title": {"type": "plain_text", "text": f"Approve {request.gate}?"},
                         "text": {"type": "mrkdwn", "text": "The runbook continues with the next "
                                                            "irreversible step."},
                         "confirm": {"type": "plain_text", "text": "Approve"},
                         "deny": {"type": "plain_text", "text": "Cancel"}}},
            {"type": "button", "action_id": ActionId.REJECT, "style": "danger",
             "text": {"type": "plain_text", "text": "Reject"}, "value": request.encode()},
        ]},
    ]


def _chunks(lines: list[str], limit: int = 3000) -> list[str]:
    """Whole lines joined into texts of at most `limit` characters (a longer line is cut)."""
    texts = [""]
    for line in lines:
        line = line[:limit]
        if texts[-1] and len(texts[-1]) + 1 + len(line) > limit:
            texts.append("")
        texts[-1] = f"{texts[-1]}\n{line}" if texts[-1] else line
    return texts


def request_text(request: GateRequest) -> str:
    """Notification fallback text."""
    return escape(f"Approval needed: {request.gate} for {request.runbook} of {request.domain} "
                  f"(run {request.run_id})")


def without_buttons(blocks: list[dict]) -> list[dict]:
    """The message's blocks minus the reason box, the buttons and any earlier outcome."""
    gone = {BlockId.REASON, BlockId.ACTIONS, BlockId.OUTCOME}
    return [b for b in blocks if b.get("block_id") not in gone]


def outcome_block(text: str) -> dict:
    return {"type": "section", "block_id": BlockId.OUTCOME, "text": {"type": "mrkdwn", "text": text[:3000]}}


def stamp(when: datetime | None = None) -> str:
    return f"{(when or datetime.now(UTC)):%Y-%m-%d %H:%M:%S} UTC"


def decided_text(decision: str, who: str, when: datetime | None = None, comment: str = "",
                 channel: str = "Slack") -> str:
    """`who` is mrkdwn already (see `mention`, `escape`); the comment is escaped here."""
    mark = ":white_check_mark: *Approved*" if decision == "approved" else ":x: *Rejected*"
    return f"{mark} by {who} at {stamp(when)} via {channel}" + (f": {escape(comment)}" if comment else "")


def timed_out_text(timeout_seconds: float, when: datetime | None = None) -> str:
    return (f":hourglass: *Timed out* at {stamp(when)}: no decision within {timeout_seconds:.0f} s. "
            "The run stops and returns to the last safe state.")


def compensation_text(compensation: dict) -> str:
    if "failed" in compensation:
        return (f":warning: *Compensation FAILED*: {escape(compensation['failed'])}. The system may not "
                "be in a safe state: see `baton audit show`.")
    actions = compensation.get("actions") or ["nothing to undo"]
    return ":leftwards_arrow_with_hook: *Compensation ran*: " + escape("; ".join(map(str, actions)))


def reminder_text(gate: str, seconds_left: float) -> str:
    return (f":alarm_clock: Reminder: {escape(gate)} times out in about {max(seconds_left, 0):.0f} s; "
            "without a decision the run stops and returns to the last safe state.")
