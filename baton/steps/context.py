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

    def option(self, condition: str) -> bool:
        """Evaluate a step's `when` condition such as `divergent_policy=discard`."""
        if not condition:
            return True
        name, _, value = condition.partition("=")
        return str(getattr(self, name)) == value
