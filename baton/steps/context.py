"""What every runbook step receives: the topology, the run, and what earlier steps found."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from baton.audit import AuditStore
from baton.authority import AuthorityStore
from baton.settings import Topology

DIVERGENT_POLICIES = ("republish", "quarantine", "discard")


@dataclass
class RunContext:
    topology: Topology
    runbook: str
    run_id: str
    old_owner: str  # holds authority when the run starts
    new_owner: str  # receives it
    audit: AuditStore
    authority: AuthorityStore
    operator: str
    unplanned: bool = False
    reason: str = ""
    lag_override_reason: str = ""
    divergent_policy: str = "quarantine"
    # What earlier steps measured or did, for later steps and for compensation.
    state: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = field(default=logging.getLogger("baton.steps").info)
    # Clients and measurements a later step of the same process may reuse to keep the fenced
    # window short (e.g. the currency step's lag for translation). Never evidence, never
    # persisted: a resumed run starts without it and measures again.
    reuse: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def domain(self) -> str:
        return self.topology.domain.name

    @property
    def owner_now(self) -> str:
        """The region holding authority at this point of the run: the new owner once this run
        switched (a failover's reprotect steps), else the old owner (failback, reprotect)."""
        return self.new_owner if self.state.get("switched") else self.old_owner

    @property
    def standby_now(self) -> str:
        """The region that must be kept current (and whose divergent tail is handled)."""
        return self.old_owner if self.state.get("switched") else self.new_owner

    @property
    def translations(self) -> str:
        """`refused` once translate_consumer_offsets left entries without an offset, else `ok`."""
        return "refused" if self.state.get("translate_consumer_offsets", {}).get("refused") else "ok"

    def option(self, condition: str) -> bool:
        """Evaluate a step's `when` condition such as `divergent_policy=discard`, or several
        joined by ` and ` (read when the step is reached, so it may name what earlier steps found)."""
        for clause in clauses(condition):
            name, _, value = clause.partition("=")
            if str(getattr(self, name)) != value:
                return False
        return True


def clauses(condition: str) -> list[str]:
    """The `name=value` parts of a step's `when` (empty: always)."""
    return [c.strip() for c in condition.split(" and ") if c.strip()]
