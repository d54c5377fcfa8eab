"""Replication engines behind one protocol; MirrorMaker 2 is the first."""

from baton.replication.engine import (
    ConnectorState,
    EngineReading,
    GroupCheckpoint,
    OffsetHint,
    ReplicationEngine,
    ReplicationStatus,
)

__all__ = [
    "ConnectorState", "EngineReading", "GroupCheckpoint", "OffsetHint", "ReplicationEngine",
    "ReplicationStatus", "engine_for",
]


def engine_for(topology) -> ReplicationEngine:
    """The engine the topology names."""
    if topology.replication.engine == "mm2":
        from baton.replication.mm2.engine import MirrorMakerEngine

        return MirrorMakerEngine(topology)
    raise NotImplementedError(topology.replication.engine)
