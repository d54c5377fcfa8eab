"""Reading a region fast and bounded: watermarks, committed offsets, and ranges of records.

Ranges of many partitions are read by one consumer in parallel (the cost of a currency
check or a translation is one pass over small windows, not one round trip per partition).
Records are kept as fingerprints: what matching needs, without holding payloads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec, ResourceType
from confluent_kafka.cimpl import _AdminClientImpl

from baton.errors import RegionUnreachable
from baton.kafka.admin import topic_partitions
from baton.kafka.fingerprint import TimestampMode, message_fingerprint

Partition = tuple[str, int]
# Ranges closer than this are read as one (re-reading a few records beats another round).
MERGE_GAP = 2000


class Rec(NamedTuple):
    offset: int
    fingerprint: bytes
    timestamp_ms: int
    timestamp_type: int


class Watermarks(NamedTuple):
    start: int  # log start offset (moves with retention)
    end: int  # high watermark: the next offset to be written
    stable: int | None = None  # last stable offset: the first offset of the oldest open transaction

    @property
    def empty(self) -> bool:
        return self.start >= self.end


def _result(future, what: str, region: str, timeout: float):
    try:
        return future.result(timeout=timeout)
    except KafkaException as e:
        raise RegionUnreachable(f"region {region!r}: {what} failed: {e.args[0]}") from e
    except TimeoutError as e:
        raise RegionUnreachable(f"region {region!r}: {what} got no answer within {timeout:g}s") from e


def partition_counts(admin: AdminClient, topics: Iterable[str], region: str,
                     timeout: float = 10) -> dict[str, int | None]:
    """Partition count of each topic, None when the topic does not exist."""
    try:
        return topic_partitions(admin, topics, timeout)
    except KafkaException as e:
        raise RegionUnreachable(
            f"region {region!r}: describing topics failed within {timeout:g}s: {e.args[0]}"
        ) from e


def timestamp_types(admin: AdminClient, topics: Iterable[str], region: str,
                    timeout: float = 10) -> dict[str, str]:
    """message.timestamp.type of each topic: CreateTime or LogAppendTime."""
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    if not resources:
        return {}
    types = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        configs = _result(future, f"describing topic {resource.name}", region, timeout)
        types[resource.name] = configs["message.timestamp.type"].value
    return types


def watermarks(admin: AdminClient, partitions: Iterable[Partition], region: str,
               timeout: float = 10, *, stable: bool = False) -> dict[Partition, Watermarks]:
    """Log start and end offsets of many partitions: two batched requests (three with `stable`) at once."""
    partitions = list(partitions)
    if not partitions:
        return {}
    asks = [("start", EARLIEST, IsolationLevel.READ_UNCOMMITTED),
            ("end", LATEST, IsolationLevel.READ_UNCOMMITTED)]
    if stable:
        asks.append(("stable", LATEST, IsolationLevel.READ_COMMITTED))
    # Every request is sent before any answer is awaited: one round trip, not one per kind.
    requested = {name: _list_offsets(admin, partitions, spec, isolation, timeout)
                 for name, spec, isolation in asks}
    found: dict[str, dict[Partition, int]] = {}
    for name, future in requested.items():
        answers = _result(future, f"listing {name} offsets", region, timeout)
        found[name] = {}
        for tp, answer in answers.items():
            if isinstance(answer, KafkaError):
                raise RegionUnreachable(f"region {region!r}: listing {name} offsets of "
                                        f"{tp.topic}[{tp.partition}] failed: {answer}")
            found[name][(tp.topic, tp.partition)] = answer.offset
    return {tp: Watermarks(found["start"][tp], found["end"][tp], found.get("stable", {}).get(tp))
            for tp in partitions}


# ListOffsets' special timestamps (Kafka protocol): the log start and the end offset.
EARLIEST, LATEST = -2, -1


def _list_offsets(admin: AdminClient, partitions: list[Partition], spec: int, isolation: IsolationLevel,
                  timeout: float) -> Future:
    """One ListOffsets request whose single future answers {TopicPartition: result or KafkaError}.

    AdminClient.list_offsets wraps the same call in one Python future per partition: at 1000
    partitions and five requests per watch sample that was the sample's largest CPU cost.
    """
    future: Future = Future()
    future.set_running_or_notify_cancel()
    _AdminClientImpl.list_offsets(admin, [TopicPartition(t, p, spec) for t, p in partitions], future,
                                  isolation_level_value=isolation.value, request_timeout=timeout)
    return future


def offsets_for_times(admin: AdminClient, wanted: dict[Partition, int], region: str,
                      timeout: float = 10) -> dict[Partition, int]:
    """First offset with timestamp >= the given ms, per partition (-1: none)."""
    if not wanted:
        return {}
    request = {TopicPartition(t, p): OffsetSpec.for_timestamp(ms) for (t, p), ms in wanted.items()}
    futures = admin.list_offsets(request, request_timeout=timeout)
    return {(tp.topic, tp.partition): _result(f, f"seeking {tp.topic} by time", region, timeout).offset
            for tp, f in futures.items()}


def committed_offsets(admin: AdminClient, group: str, region: str,
                      timeout: float = 10) -> dict[Partition, int]:
    """Every committed offset of a group (partitions without a commit are absent)."""
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                request_timeout=timeout)
    result = _result(futures[group], f"reading offsets of group {group}", region, timeout)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions
            if tp.offset >= 0 and not tp.error}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1] + MERGE_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def read_ranges(
    config: dict,
    ranges: dict[Partition, list[tuple[int, int]]],
    region: str,
    *,
    timestamps: dict[str, TimestampMode] | None = None,
    exclude_headers: frozenset[str] = frozenset(),
    timeout: float = 60,
    consumer: Consumer | None = None,
) -> dict[Partition, dict[int, Rec]]:
    """Records in [start, stop) of each partition, by offset. Stops must not pass the end offsets.

    consumer: a reader() kept by the caller between reads (left open, unassigned); by default
    one is made and closed here.
    """
    merged = {tp: _merge(spans) for tp, spans in ranges.items()}
    merged = {tp: spans for tp, spans in merged.items() if spans}
    records: dict[Partition, dict[int, Rec]] = {tp: {} for tp in ranges}
    if not merged:
        return records
    timestamps = timestamps or {}
    own = consumer is None
    consumer = consumer or reader(config)
    deadline = time.monotonic() + timeout
    try:
        rounds = max(len(spans) for spans in merged.values())
        for index in range(rounds):
            pending = {tp: spans[index][1] for tp, spans in merged.items() if len(spans) > index}
            consumer.assign([TopicPartition(t, p, merged[(t, p)][index][0]) for t, p in pending])
            while pending:
                if time.monotonic() > deadline:
                    waiting = ", ".join(f"{t}[{p}]" for t, p in list(pending)[:5])
                    raise RegionUnreachable(
                        f"region {region!r}: reading records did not finish within {timeout:g}s "
                        f"({len(pending)} partitions unfinished, e.g. {waiting}); check the brokers"
                    )
                for message in consumer.consume(num_messages=10000, timeout=0.05):
                    tp = (message.topic(), message.partition())
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.pop(tp, None)
                            continue
                        raise RegionUnreachable(f"region {region!r}: reading {tp[0]}[{tp[1]}] "
                                                f"failed: {error}")
                    stop = pending.get(tp)
                    if stop is None:
                        continue
                    offset = message.offset()
                    if offset < stop:
                        records[tp][offset] = Rec(
                            offset,
                            message_fingerprint(message, timestamps=timestamps.get(tp[0], "typed"),
                                                exclude_headers=exclude_headers),
                            *reversed(message.timestamp()),
                        )
                    if offset >= stop - 1:
                        pending.pop(tp)
            consumer.unassign()
    finally:
        if own:
            consumer.close()
    return records


def read_ranges_of_both(owner: tuple[dict, dict, str], mirror: tuple[dict, dict, str],
                        **options) -> tuple[dict[Partition, dict[int, Rec]], dict[Partition, dict[int, Rec]]]:
    """read_ranges of two regions at once, each (config, ranges, region): two consumers whose
    broker round trips overlap (librdkafka waits without holding the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(read_ranges, *owner, **options)
        second = read_ranges(*mirror, **options)
        return first.result(), second


def reader(config: dict) -> Consumer:
    """A consumer for read_ranges: assigned explicitly, commits nothing."""
    return Consumer(config | {
        "group.id": "baton-reader", "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "socket.connection.setup.timeout.ms": 5000,
        # It reads records that exist: a fetch that also names partitions at their end must not
        # wait for new data (librdkafka's default 500 ms showed as 0.5 s stalls in check_lag).
        "fetch.wait.max.ms": 10,
    })
