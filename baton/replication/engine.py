"""The capability every replication engine offers to runbooks.

MirrorMaker 2 implements it over Kafka Connect; Cluster Linking or MSK Replicator
adapters implement the same methods, and runbooks never see the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ConnectorState:
    name: str
    state: str  # RUNNING, PAUSED, STOPPED, FAILED, UNASSIGNED, MISSING
    tasks: tuple[str, ...] = ()
    trace: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING" and all(task == "RUNNING" for task in self.tasks)


@dataclass(frozen=True)
class ReplicationStatus:
    engine: str
    source: str
    target: str
    components: tuple[ConnectorState, ...] = field(default_factory=tuple)

    @property
    def state(self) -> str:
        """RUNNING when every component and task runs; STOPPED when all stopped; else DEGRADED."""
        if self.components and all(c.running for c in self.components):
            return "RUNNING"
        if self.components and all(c.state in ("STOPPED", "MISSING") for c in self.components):
            return "STOPPED"
        return "DEGRADED"

    def as_dict(self) -> dict:
        return {
            "engine": self.engine,
            "source": self.source,
            "target": self.target,
            "state": self.state,
            "components": [
                {"name": c.name, "state": c.state, "tasks": list(c.tasks), "trace": c.trace}
                for c in self.components
            ],
        }


class ReplicationEngine(Protocol):
    name: str

    def remote_topic(self, topic: str, source_region: str) -> str:
        """The mirror's name on the other region."""

    def status(self, source: str, target: str) -> ReplicationStatus:
        """Health of the flow source -> target."""

    def start(self, source: str, target: str, *, wait_seconds: float = 60) -> ReplicationStatus:
        """Create or resume the flow source -> target; idempotent; waits until it runs."""

    def stop(self, source: str, target: str, *, wait_seconds: float = 60) -> ReplicationStatus:
        """Stop the flow source -> target, keeping its progress; idempotent."""
