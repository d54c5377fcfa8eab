"""Duplicates re-delivered after a planned failover: Baton exact vs MM2 checkpoints, same run.

Workload: sequenced records on a 6-partition topic; 10 real consumer groups each process a
random share on east and commit; producers stop (planned failover), replication catches up,
MM2 has checkpointed. Both translations are then *consumed* on west and compared with what
each group had processed on east: re-delivered (duplicates) and never delivered (missing).

  BATON_HOME=... BATON_LAB_PORT_BASE=... .venv/bin/python bench/bench_failover_duplicates.py [rounds]
"""

from __future__ import annotations

import random
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from baton.kafka.admin import admin_client, ensure_topics
from baton.lab.lab import Lab
from baton.replication.currency import verify_currency
from baton.replication.translation import translate_offsets

PARTITIONS, RECORDS, GROUPS = 6, 3000, 10


def consume_rest(config: dict, topic: str, partition: int, start: int) -> list[bytes]:
    consumer = Consumer(config | {"group.id": "baton-bench-reader", "enable.auto.commit": False})
    end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    consumer.assign([TopicPartition(topic, partition, start)])
    values, deadline = [], time.monotonic() + 60
    while start + len(values) < end and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            values.append(message.value())
    consumer.close()
    return values


def one_round(topology, seed: int) -> dict:
    rng = random.Random(seed)
    topic = f"orders.bench-fo-{uuid.uuid4().hex[:6]}"
    east = admin_client(topology.regions["east"])
    ensure_topics(east, {topic: PARTITIONS})
    producer = Producer(topology.regions["east"].client_config("producer") | {"linger.ms": 5})
    for i in range(RECORDS):
        producer.produce(topic, value=f"r{i}".encode(), partition=i % PARTITIONS)
    producer.flush(30)
    groups, processed = [], {}
    for _ in range(GROUPS):
        group = f"orders-bench-{uuid.uuid4().hex[:6]}"
        groups.append(group)
        consumer = Consumer(topology.regions["east"].client_config("consumer") | {
            "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        wanted, seen = rng.randrange(RECORDS // 10, RECORDS), set()
        while len(seen) < wanted:
            message = consumer.poll(1)
            if message is not None and not message.error():
                seen.add(message.value())
        consumer.commit(asynchronous=False)
        consumer.close()
        processed[group] = seen
    # Planned failover: writes stopped; wait for currency, then give MM2 three checkpoint intervals.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if verify_currency(topology, topics=[topic]).current:
                break
        except Exception:
            pass
        time.sleep(2)
    time.sleep(3 * topology.replication.emit_checkpoints_interval_seconds)
    results = {}
    west_config = topology.regions["west"].client_config("admin")
    for method in ("exact", "checkpoint"):
        report = translate_offsets(topology, groups=groups, topics=[topic], method=method)
        duplicates = missing = unresolved = 0
        for group in groups:
            delivered, covered = set(), set()
            for entry in (e for e in report.entries if e.group == group):
                if not entry.usable:
                    unresolved += 1  # e.g. MM2 wrote no checkpoint: counted apart, not as missing
                    continue
                covered.add(entry.partition)
                rest = consume_rest(west_config, entry.mirror_topic, entry.partition, entry.translated_offset)
                duplicates += sum(1 for value in rest if value in processed[group])
                delivered.update(rest)
            # Partitions the group never committed are not translated (auto.offset.reset applies).
            everything = {f"r{i}".encode() for i in range(RECORDS) if i % PARTITIONS in covered}
            missing += len(everything - processed[group] - delivered)
        results[method] = (duplicates, missing, unresolved, len(report.entries))
    for admin, name in ((east, topic), (admin_client(topology.regions["west"]), f"east.{topic}")):
        for future in admin.delete_topics([name]).values():
            future.result()
    return {f"{method}_{what}": value for method, values in results.items()
            for what, value in zip(("duplicates", "missing", "unresolved", "entries"), values, strict=True)}


if __name__ == "__main__":
    topology = Lab().topology()[0]
    for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        print(one_round(topology, seed), flush=True)
