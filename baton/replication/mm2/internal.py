"""Readers of MM2's internal topics: offset syncs, checkpoints and heartbeats.

A malformed record is skipped and reported in `problems` (topic, partition, offset and
what is wrong): one bad record must never hide every good one from a caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from baton.coalesce import Coalescer
from baton.errors import RegionUnreachable, ReplicationError
from baton.replication.mm2.records import (
    Checkpoint,
    Heartbeat,
    MalformedRecord,
    OffsetSync,
    Where,
    decode_checkpoint,
    decode_heartbeat,
    decode_offset_sync,
)

T = TypeVar("T")


@dataclass
class Decoded:
    """Decoded records in log order, each with its record timestamp (ms), plus what was skipped."""

    topic: str
    records: list = field(default_factory=list)  # (value, timestamp_ms)
    problems: list[str] = field(default_factory=list)
    read_to: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    low: dict[int, int] = field(default_factory=dict)  # partition -> log start offset at the read
    start: dict[int, int] = field(default_factory=dict)  # partition -> where this read began


def read_internal(config: dict, topic: str, region: str, decode: Callable[..., T], *,
                  tail: int | None = None, after: dict[int, int] | None = None,
                  timeout: float = 30) -> Decoded:
    """Decode a whole internal topic (or the last `tail` records of each partition, or what
    follows `after`: partition -> offset, a Decoded.read_to of an earlier read)."""
    consumer = Consumer(config | {
        "group.id": "baton-reader", "enable.auto.commit": False, "enable.partition.eof": True,
        "socket.connection.setup.timeout.ms": 5000, "fetch.wait.max.ms": 10,  # as reading.reader
    })
    result = Decoded(topic)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=min(timeout, 10))
        except KafkaException as e:
            raise RegionUnreachable(f"region {region!r}: looking up {topic} failed: {e.args[0]}") from e
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise ReplicationError(
                f"MM2 internal topic {topic!r} is missing on region {region!r}; MirrorMaker 2 creates "
                "it when its connectors run: check `baton lab status` / the Connect worker"
            )
        assignment = []
        for partition in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = low if tail is None else max(low, high - tail)
            if after is not None and low <= after.get(partition, low) <= high:
                start = after.get(partition, low)
            result.read_to[partition], result.low[partition], result.start[partition] = high, low, start
            if high > start:
                assignment.append((TopicPartition(topic, partition, start), high))
        stops = {tp.partition: high for tp, high in assignment}
        consumer.assign([tp for tp, _ in assignment])
        per_partition: dict[int, list] = {p: [] for p in stops}
        deadline = time.monotonic() + timeout
        while stops:
            if time.monotonic() > deadline:
                raise RegionUnreachable(f"region {region!r}: reading {topic} did not finish "
                                        f"within {timeout:g}s")
            for message in consumer.consume(num_messages=10000, timeout=0.05):
                partition = message.partition()
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        stops.pop(partition, None)
                        continue
                    raise RegionUnreachable(f"region {region!r}: reading {topic} failed: "
                                            f"{message.error()}")
                where = Where(topic, partition, message.offset())
                try:
                    per_partition[partition].append(
                        (decode(message.key(), message.value(), where), message.timestamp()[1])
                    )
                except MalformedRecord as e:
                    result.problems.append(str(e))
                if partition in stops and message.offset() >= stops[partition] - 1:
                    stops.pop(partition)
    finally:
        consumer.close()
    for records in per_partition.values():
        result.records.extend(records)
    return result


# One sync topic serves every domain of a region pair, and every step of a run reads all of it:
# in an evacuation, 43 % of the process's GIL time was decoding the same syncs again. A process
# keeps what it read, indexed by upstream partition, and reads only what follows; concurrent
# readers share one read that started after each asked (so every answer holds all that was
# written before the call). A caller names its topics: grouping every domain's syncs again for
# each call was 13 % of an evacuation's GIL time.
@dataclass(frozen=True)
class SyncLog:
    """Every offset sync read so far, per upstream (topic, partition) in log order. Never
    changed once built: an extension is a new SyncLog (readers of the old one keep theirs)."""

    index: dict[tuple[str, int], list[OffsetSync]]
    count: int
    problems: list[str]
    read_to: dict[int, int]
    low: dict[int, int]
    start: dict[int, int]

    def extended(self, newer: Decoded) -> SyncLog:
        index = dict(self.index)
        for tp, found in _grouped(newer.records).items():
            index[tp] = index.get(tp, []) + found
        return SyncLog(index, self.count + len(newer.records), self.problems + newer.problems,
                       newer.read_to, newer.low,
                       self.start | {p: newer.start[p] for p in newer.start if p not in self.start})

    @classmethod
    def of(cls, whole: Decoded) -> SyncLog:
        return cls(_grouped(whole.records), len(whole.records), whole.problems, whole.read_to,
                   whole.low, whole.start)


def _grouped(records: list) -> dict[tuple[str, int], list[OffsetSync]]:
    syncs: dict[tuple[str, int], list[OffsetSync]] = {}
    for sync, _ in records:
        syncs.setdefault((sync.topic, sync.partition), []).append(sync)
    return syncs


SYNC_READS: Coalescer[SyncLog] = Coalescer()
_SYNC_LOGS: dict[tuple, SyncLog] = {}
MAX_KEPT_SYNCS = 200_000  # beyond this a process reads the whole topic each time, as before


def _continues(kept: SyncLog, newer: Decoded) -> bool:
    """Whether `newer` (read after kept.read_to) extends `kept` to what a whole read returns now:
    no partition lost records from its head (retention, DeleteRecords) or shrank below what was
    read (recreated). A topic recreated and refilled past that point within one process's life
    is not seen; MM2 creates this topic once per region pair."""
    return all(newer.low.get(p) == kept.low[p] and newer.start.get(p) == kept.read_to[p]
               for p in kept.read_to)


def _read_sync_log(config: dict, topic: str, region: str, key: tuple) -> SyncLog:
    kept = _SYNC_LOGS.get(key)
    if kept is not None:
        newer = read_internal(config, topic, region, decode_offset_sync, after=kept.read_to)
        if _continues(kept, newer) and kept.count + len(newer.records) <= MAX_KEPT_SYNCS:
            # A compacted-away sync stays here: MM2 wrote it, its upstream -> downstream pair holds.
            _SYNC_LOGS[key] = kept.extended(newer)
            return _SYNC_LOGS[key]
    whole = SyncLog.of(read_internal(config, topic, region, decode_offset_sync))
    if whole.count <= MAX_KEPT_SYNCS:
        _SYNC_LOGS[key] = whole
    else:
        _SYNC_LOGS.pop(key, None)
    return whole


def offset_syncs(config: dict, topic: str, region: str, after: dict[int, int] | None = None,
                 topics: frozenset[str] | None = None
                 ) -> tuple[dict[tuple[str, int], list[OffsetSync]], list[str], dict[int, int]]:
    """Offset syncs per upstream (topic, partition), in the order MM2 wrote them, of `topics`
    (None: every topic); where the read ended (pass it as `after` to read only newer syncs)."""
    if after is None:
        key = (config.get("bootstrap.servers"), config.get("sasl.username"), topic)
        log = SYNC_READS.read(key, lambda: _read_sync_log(config, topic, region, key))
        syncs, problems, read_to = log.index, log.problems, log.read_to
    else:
        decoded = read_internal(config, topic, region, decode_offset_sync, after=after)
        syncs, problems, read_to = _grouped(decoded.records), decoded.problems, decoded.read_to
    return ({tp: list(found) for tp, found in syncs.items() if topics is None or tp[0] in topics},
            list(problems), dict(read_to))


def checkpoints(config: dict, topic: str, region: str
                ) -> tuple[dict[tuple[str, str, int], tuple[Checkpoint, int]], list[str]]:
    """The newest checkpoint (and its record time, ms) per (group, mirror topic, partition)."""
    latest, problems, _ = checkpoints_after(config, topic, region)
    return latest, problems


Latest = dict[tuple[str, str, int], tuple[Checkpoint, int]]


def checkpoints_after(config: dict, topic: str, region: str, after: dict[int, int] | None = None
                      ) -> tuple[Latest, list[str], dict[int, int]]:
    """checkpoints(), only from the records after `after` (this function's earlier read_to) on."""
    decoded = read_internal(config, topic, region, decode_checkpoint, after=after)
    latest = {}
    for checkpoint, timestamp in decoded.records:
        latest[(checkpoint.group, checkpoint.topic, checkpoint.partition)] = (checkpoint, timestamp)
    return latest, decoded.problems, decoded.read_to


def newest_heartbeat(config: dict, topic: str, region: str, source: str
                     ) -> tuple[Heartbeat | None, list[str]]:
    """The newest heartbeat emitted by `source` found in a heartbeats topic."""
    decoded = read_internal(config, topic, region, decode_heartbeat, tail=20)
    beats = [beat for beat, _ in decoded.records if beat.source == source]
    return max(beats, key=lambda beat: beat.timestamp_ms, default=None), decoded.problems
