"""Read whole records from offset ranges, and copy them to another topic with their origin."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from baton.errors import RegionUnreachable, StepFailed

ORIGIN_HEADER = "baton.origin"  # "<region>/<topic>/<partition>/<offset>" of the copied record


@dataclass(frozen=True)
class FullRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    def describe(self) -> dict:
        key = self.key.decode("utf-8", "replace") if self.key is not None else None
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "key": key, "timestamp_ms": self.timestamp_ms}


def read_records(config: dict, ranges: dict[tuple[str, int], list[tuple[int, int]]], region: str,
                 timeout: float = 60) -> list[FullRecord]:
    """Every record in the [start, stop) ranges, in partition and offset order."""
    wanted = {tp: spans for tp, spans in ranges.items() if any(b > a for a, b in spans)}
    records: list[FullRecord] = []
    if not wanted:
        return records
    consumer = Consumer(config | {"group.id": "baton-reader", "enable.auto.commit": False,
                                  "enable.partition.eof": True})
    deadline = time.monotonic() + timeout
    try:
        for (topic, partition), spans in wanted.items():
            for start, stop in spans:
                consumer.assign([TopicPartition(topic, partition, start)])
                offset = start
                while offset < stop:
                    if time.monotonic() > deadline:
                        raise RegionUnreachable(f"region {region!r}: reading {topic}[{partition}] "
                                                f"{start}..{stop} did not finish within {timeout:g}s")
                    message = consumer.poll(0.5)
                    if message is None:
                        continue
                    if message.error():
                        if message.error().code() == KafkaError._PARTITION_EOF:
                            break
                        raise RegionUnreachable(f"region {region!r}: reading {topic}[{partition}] "
                                                f"failed: {message.error()}")
                    offset = message.offset() + 1
                    if message.offset() < stop:
                        records.append(FullRecord(topic, partition, message.offset(), message.key(),
                                                  message.value(), tuple(message.headers() or ()),
                                                  message.timestamp()[1]))
    finally:
        consumer.close()
    return records


def copy_records(config: dict, records: list[FullRecord], target_topic: str | None, source_region: str,
                 target_region: str, timeout: float = 30) -> list[dict]:
    """Produce each record (same key, value, headers, timestamp and partition) plus an origin
    header to target_topic (None: the same topic name); every delivery is checked."""
    producer = Producer(config | {"enable.idempotence": True, "acks": "all"})
    outcomes: list[dict] = []

    def delivered(record: FullRecord):
        def callback(error, message):
            outcomes.append(record.describe() | {
                "copied_to": f"{target_region}/{message.topic()}[{message.partition()}]",
                "copied_offset": None if error else message.offset(),
                "error": str(error) if error else None})
        return callback

    for record in records:
        origin = f"{source_region}/{record.topic}/{record.partition}/{record.offset}".encode()
        producer.produce(target_topic or record.topic, key=record.key, value=record.value,
                         headers=[*record.headers, (ORIGIN_HEADER, origin)],
                         timestamp=record.timestamp_ms, partition=record.partition,
                         on_delivery=delivered(record))
    left = producer.flush(timeout)
    failed = [o for o in outcomes if o["error"]]
    if left or failed or len(outcomes) != len(records):
        raise StepFailed(f"copying to {target_region} failed: {left} undelivered, "
                         f"{len(failed)} errors (first: {failed[0]['error'] if failed else '-'})")
    return outcomes
