"""MirrorMaker 2 as a ReplicationEngine: three connectors per flow on a Kafka Connect worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from baton.errors import ReplicationError
from baton.kafka.admin import client_config
from baton.replication.engine import (
    ConnectorState,
    EngineReading,
    GroupCheckpoint,
    OffsetHint,
    ReplicationStatus,
)
from baton.replication.mm2 import internal
from baton.replication.mm2.connect import ConnectClient
from baton.replication.mm2.connectors import KINDS, connector_config, connector_name
from baton.settings import Topology

FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.05, 0.5
PROGRESS_EVERY_SECONDS = 5.0


class MirrorMakerEngine:
    name = "mm2"
    # MM2 copies headers as they are and adds none.
    replication_headers: frozenset[str] = frozenset()

    def __init__(self, topology: Topology, timeout: float = 10.0):
        self.topology = topology
        self.connect = ConnectClient(topology.replication.connect_url, timeout=timeout)

    def remote_topic(self, topic: str, source_region: str) -> str:
        return self.topology.replication.remote_topic(topic, source_region)

    # -- internal topics ---------------------------------------------------------------------

    def _setting(self, key: str, default: str) -> str:
        return self.topology.replication.extra_connector_config.get(key, default)

    def internal_topics(self, source: str, target: str) -> dict[str, tuple[str, str]]:
        """Where MM2 keeps its bookkeeping for the flow source -> target: purpose -> (region, topic)."""
        separator = self.topology.replication.separator
        at_source = self._setting("offset-syncs.topic.location", "source") == "source"
        syncs_region = source if at_source else target
        # MM2 names the topic after the *other* cluster (MirrorSourceConfig.offsetSyncsTopic).
        other = target if at_source else source
        return {
            "offset-syncs": (syncs_region, f"mm2-offset-syncs{separator}{other}{separator}internal"),
            "checkpoints": (target, f"{source}{separator}checkpoints{separator}internal"),
            "heartbeats": (target, self.remote_topic("heartbeats", source)),
        }

    def _config(self, region: str) -> dict:
        return client_config(self.topology.regions[region])

    def offset_hints(self, source: str, target: str, after: dict | None = None,
                     topics: Iterable[str] | None = None) -> EngineReading:
        """The offset syncs of the flow (of `topics` only, if named); with `after` (an earlier
        reading's position) only newer ones."""
        region, topic = self.internal_topics(source, target)["offset-syncs"]
        syncs, problems, read_to = internal.offset_syncs(
            self._config(region), topic, region, after, None if topics is None else frozenset(topics))
        return EngineReading(
            {tp: [OffsetHint(s.topic, s.partition, s.upstream_offset, s.downstream_offset) for s in found]
             for tp, found in syncs.items()},
            problems,
            read_to,
        )

    def checkpoints(self, source: str, target: str, after: dict | None = None) -> EngineReading:
        """The newest checkpoint per group partition; with `after` (an earlier reading's position)
        only those written since."""
        region, topic = self.internal_topics(source, target)["checkpoints"]
        latest, problems, read_to = internal.checkpoints_after(self._config(region), topic, region, after)
        return EngineReading(
            {key: GroupCheckpoint(c.group, c.topic, c.partition, c.upstream_offset, c.downstream_offset,
                                  timestamp)
             for key, (c, timestamp) in latest.items()},
            problems,
            read_to,
        )

    def checkpoint_duplicates_bound(self) -> int | None:
        # Since KAFKA-14666 MM2 translates to just after the newest offset sync below the
        # group's offset, and emits a sync at least every offset.lag.max records.
        return self.topology.replication.offset_lag_max

    def heartbeat_age(self, source: str, target: str, now_ms: int) -> float | None:
        region, topic = self.internal_topics(source, target)["heartbeats"]
        beat, _ = internal.newest_heartbeat(self._config(region), topic, region, source)
        return None if beat is None else max(0.0, (now_ms - beat.timestamp_ms) / 1000)

    # -- connectors --------------------------------------------------------------------------

    def connector_names(self, source: str, target: str) -> list[str]:
        return [connector_name(self.topology, kind, source, target) for kind in KINDS]

    def _writes_data(self, kind: str) -> bool:
        """The source task copies records; the checkpoint task writes group offsets in the target
        only with sync.group.offsets; the heartbeat task writes heartbeats alone."""
        if kind == "checkpoint":
            return self.topology.replication.sync_group_offsets or self._setting(
                "sync.group.offsets.enabled", "false").lower() == "true"
        return kind == "source"

    def status(self, source: str, target: str) -> ReplicationStatus:
        names = self.connector_names(source, target)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:  # one round trip, not three
            raws = list(pool.map(self.connect.status, names))
        components = []
        for kind, name, raw in zip(KINDS, names, raws, strict=True):
            writes = self._writes_data(kind)
            if raw is None:
                components.append(ConnectorState(name, "MISSING", writes_data=writes))
                continue
            tasks = tuple(task["state"] for task in raw.get("tasks", []))
            traces = [t.get("trace") for t in raw.get("tasks", []) if t.get("trace")]
            trace = raw["connector"].get("trace") or (traces[0] if traces else None)
            state = raw["connector"]["state"]
            # A source connector with no task copies nothing: it is not running yet.
            if name.endswith("source") and state == "RUNNING" and not tasks:
                state = "UNASSIGNED"
            components.append(ConnectorState(name, state, tasks, trace, writes))
        return ReplicationStatus(self.name, source, target, tuple(components))

    def start(self, source: str, target: str, *, wait_seconds: float = 60,
              keep_config: bool = False) -> ReplicationStatus:
        """Connectors configured from the topology and RUNNING. With `keep_config`, existing
        connectors are only resumed as they were (recovery restarts what a run stopped, and
        must not rewrite it with credentials that may be the very thing that is wrong)."""
        def start_one(kind: str) -> None:
            name = connector_name(self.topology, kind, source, target)
            wanted = connector_config(self.topology, kind, source, target)
            current = self.connect.config(name)
            if current is None or (not keep_config and {k: current.get(k) for k in wanted} != wanted):
                self.connect.put_config(name, wanted)
            status = self.connect.status(name)
            # Not only STOPPED/PAUSED: a worker that just started reports UNASSIGNED until it has
            # read its status topic, whatever the target state (a STOPPED connector then stayed
            # STOPPED). Resuming a connector whose target is already STARTED changes nothing.
            if status and status["connector"]["state"] != "RUNNING":
                self.connect.resume(name)

        # All three at once, as request_stop: Connect answers a change only after its rebalance,
        # and a change refused meanwhile (409) is retried by the client. One after the other,
        # an evacuation's ten domains queued 3 s of reverse starts behind each other.
        with ThreadPoolExecutor(max_workers=len(KINDS)) as pool:
            list(pool.map(start_one, KINDS))
        return self.wait_for(source, target, "RUNNING", wait_seconds)

    def stop(self, source: str, target: str, *, wait_seconds: float = 60) -> ReplicationStatus:
        self.request_stop(source, target)
        return self.wait_for(source, target, "STOPPED", wait_seconds)

    def request_stop(self, source: str, target: str) -> None:
        # Only the connectors that write data are stopped; heartbeat and checkpoint connectors
        # (unless they sync group offsets) keep running in a flow that copies nothing. Connect
        # applies stops one rebalance at a time and a rebalance waits for each revoked task's
        # current poll, which for these tasks lasts their emit interval: stopping them made
        # every stop round ~1 s on the lab, and ten domains' stops queued ~7 s behind each other
        # (bench/RESULTS.md, evacuation). Left running, they are already running when the flow
        # starts again, so a start resumes one connector instead of three.
        def stop_if_present(name: str) -> None:
            if self.connect.status(name) is not None:
                self.connect.stop(name)

        names = [connector_name(self.topology, kind, source, target) for kind in KINDS
                 if self._writes_data(kind)]
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(stop_if_present, names))

    def wait_for(self, source: str, target: str, wanted: str, wait_seconds: float,
                 progress: Callable[[str], None] | None = None) -> ReplicationStatus:
        started = noted = time.monotonic()
        deadline = started + wait_seconds
        pause = FIRST_POLL_SECONDS
        while True:
            status = self.status(source, target)
            if status.state == wanted:
                return status
            failed = [c for c in status.components if "FAILED" in (c.state, *c.tasks)]
            if failed or time.monotonic() > deadline:
                detail = "; ".join(
                    f"{c.name}={c.state} tasks={list(c.tasks)}"
                    + (f" trace={c.trace.splitlines()[0]}" if c.trace else "")
                    for c in status.components
                )
                raise ReplicationError(
                    f"replication {source}->{target} did not reach {wanted} within "
                    f"{wait_seconds:.0f}s: {detail}"
                )
            if progress is not None and time.monotonic() - noted > PROGRESS_EVERY_SECONDS:
                progress(f"replication {source} -> {target} is {status.state}, waiting for {wanted} "
                         f"({time.monotonic() - started:.0f} s of {wait_seconds:.0f} s)")
                noted = time.monotonic()
            # Connect usually settles within a second of the request: polled from 50 ms up.
            time.sleep(pause)
            pause = min(pause * 2, MAX_POLL_SECONDS)
