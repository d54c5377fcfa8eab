"""The runbooks, validated when imported: an unsafe runbook cannot be loaded."""

from runbooks.failback import FAILBACK
from runbooks.failover import FAILOVER
from runbooks.model import Kind, Role, Runbook, RunbookInvalid, Step, validate

RUNBOOKS: dict[str, Runbook] = {rb.name: validate(rb) for rb in (FAILOVER, FAILBACK)}

__all__ = ["FAILBACK", "FAILOVER", "RUNBOOKS", "Kind", "Role", "Runbook", "RunbookInvalid", "Step"]
