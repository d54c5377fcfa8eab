"""The capability every replication engine offers to runbooks.

MirrorMaker 2 implements it over Kafka Connect; Cluster Linking or MSK Replicator
adapters implement the same methods, and runbooks never see the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ConnectorState:
    name: str
    state: str  # RUNNING, PAUSED, STOPPED, FAILED, UNASSIGNED, MISSING
    tasks: tuple[str, ...] = ()
    trace: str | None = None
    # Whether a task of it writes data the other region acts on: records, or group offsets.
    writes_data: bool = True

    @property
    def running(self) -> bool:
        return self.state == "RUNNING" and all(task == "RUNNING" for task in self.tasks)

    @property
    def stopped(self) -> bool:
        # Connect marks the connector STOPPED before its tasks have shut down, and a task still
        # RUNNING can copy records (measured: up to 8 after the connector read STOPPED).
        return self.state in ("STOPPED", "MISSING") and "RUNNING" not in self.tasks


@dataclass(frozen=True)
class ReplicationStatus:
    engine: str
    source: str
    target: str
    components: tuple[ConnectorState, ...] = field(default_factory=tuple)

    @property
    def state(self) -> str:
        """RUNNING when every component and task runs; STOPPED when every component that writes
        data stopped and none of its tasks runs any more (the others may run: they carry nothing
        the other region acts on); else DEGRADED."""
        if self.components and all(c.running for c in self.components):
            return "RUNNING"
        copying = [c for c in self.components if c.writes_data]
        if copying and all(c.stopped for c in copying):
            return "STOPPED"
        return "DEGRADED"

    def as_dict(self) -> dict:
        return {
            "engine": self.engine,
            "source": self.source,
            "target": self.target,
            "state": self.state,
            "components": [
                {"name": c.name, "state": c.state, "tasks": list(c.tasks), "trace": c.trace,
                 "writes_data": c.writes_data}
                for c in self.components
            ],
        }


@dataclass(frozen=True)
class OffsetHint:
    """The engine's word that upstream record `upstream_offset` was copied to `downstream_offset`."""

    topic: str  # upstream topic
    partition: int
    upstream_offset: int
    downstream_offset: int


@dataclass(frozen=True)
class GroupCheckpoint:
    """The engine's own translation of a group's committed offset (MM2: a checkpoint)."""

    group: str
    topic: str  # downstream (mirror) topic
    partition: int
    upstream_offset: int
    downstream_offset: int
    timestamp_ms: int


@dataclass
class EngineReading:
    """What an engine read from its bookkeeping, plus records it could not decode."""

    items: dict
    problems: list[str] = field(default_factory=list)
    position: dict | None = None  # where the reading ended: pass it back to read only what is newer


class ReplicationEngine(Protocol):
    name: str
    # Headers the engine adds to copied records; fingerprints ignore them.
    replication_headers: frozenset[str]

    def remote_topic(self, topic: str, source_region: str) -> str:
        """The mirror's name on the other region."""

    def status(self, source: str, target: str) -> ReplicationStatus:
        """Health of the flow source -> target."""

    def start(self, source: str, target: str, *, wait_seconds: float = 60,
              keep_config: bool = False) -> ReplicationStatus:
        """Create or resume the flow source -> target; idempotent; waits until it runs."""

    def stop(self, source: str, target: str, *, wait_seconds: float = 60) -> ReplicationStatus:
        """Stop the flow source -> target copying data, keeping its progress; idempotent; waits
        until stopped. Components that write no data may keep running."""

    def request_stop(self, source: str, target: str) -> None:
        """Ask for the flow source -> target to stop copying, without waiting until it has; idempotent."""

    def wait_for(self, source: str, target: str, wanted: str, wait_seconds: float,
                 progress: Callable[[str], None] | None = None) -> ReplicationStatus:
        """Wait (bounded; `progress` told now and then) until the flow is in state `wanted`."""

    def internal_topics(self, source: str, target: str) -> dict[str, tuple[str, str]]:
        """The engine's bookkeeping topics: purpose -> (region, topic)."""

    def offset_hints(self, source: str, target: str, after: dict | None = None,
                     topics: Iterable[str] | None = None) -> EngineReading:
        """(topic, partition) -> [OffsetHint] in the order the engine wrote them, of the upstream
        `topics` (None: all); with `after` (an earlier reading's position) only those written since."""

    def checkpoints(self, source: str, target: str, after: dict | None = None) -> EngineReading:
        """(group, mirror topic, partition) -> newest GroupCheckpoint; with `after` (an earlier
        reading's position) only those written since."""

    def heartbeat_age(self, source: str, target: str, now_ms: int) -> float | None:
        """Seconds since the newest heartbeat that travelled source -> target (None: none seen)."""

    def checkpoint_duplicates_bound(self) -> int | None:
        """Most records per partition a group may see again when resuming from a checkpoint."""
