"""The audit database: runs, steps with evidence, approvals, authority epochs, drill reports.

Evidence is append-only and hash-chained; `baton audit verify` proves nothing was edited,
deleted or inserted out of order.
"""

from baton.audit.store import AuditStore, StepRecorder, new_run_id

__all__ = ["AuditStore", "StepRecorder", "new_run_id"]
