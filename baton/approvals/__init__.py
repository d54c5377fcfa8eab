"""Approvals: requests posted to Slack with the gate's evidence, and the approval service that
verifies a click (signature, approver, two-person rule), records it and resumes the flow run.

    notifier  baton.approvals.slack.SlackNotifier    (inside the flow run: post, remind, update)
    service   baton.approvals.service.ApprovalService (`baton approvals serve`: decide, record, resume)
"""

from baton.approvals.requests import ActionId, BlockId, GateRequest
from baton.approvals.service import ApprovalService, Outcome
from baton.approvals.slack import PostedRequest, SlackNotifier

__all__ = ["ActionId", "ApprovalService", "BlockId", "GateRequest", "Outcome", "PostedRequest",
           "SlackNotifier"]
