"""The runbooks, validated when imported: an unsafe runbook cannot be loaded."""

from runbooks.evacuate import EVACUATE
from runbooks.failback import FAILBACK
from runbooks.failover import FAILOVER
from runbooks.model import Kind, Role, Runbook, RunbookInvalid, Step, validate
from runbooks.reprotect import REPROTECT

RUNBOOKS: dict[str, Runbook] = {rb.name: validate(rb) for rb in (FAILOVER, FAILBACK, REPROTECT, EVACUATE)}

__all__ = ["EVACUATE", "FAILBACK", "FAILOVER", "REPROTECT", "RUNBOOKS", "Kind", "Role", "Runbook",
           "RunbookInvalid", "Step"]
