"""Currency check and exact translation at 10/100/1000 partitions x 10 groups, and the headline:
duplicates re-delivered after a planned failover, Baton exact vs MM2 checkpoints (same run).

Run against your own lab:
  BATON_HOME=... BATON_LAB_PORT_BASE=... .venv/bin/python bench/bench_replication_truth.py 10 100 1000
"""

from __future__ import annotations

import random
import sys
import time
import uuid

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition

from baton.kafka.admin import admin_client, ensure_topics
from baton.lab.lab import Lab
from baton.replication.currency import verify_currency
from baton.replication.translation import translate_offsets

RECORDS_PER_PARTITION = 40
GROUPS = 10


def run(partitions: int, topology) -> dict:
    topic = f"orders.bench-{uuid.uuid4().hex[:6]}"
    east, west = admin_client(topology.regions["east"]), admin_client(topology.regions["west"])
    ensure_topics(east, {topic: partitions})
    producer = Producer(topology.regions["east"].client_config("producer") | {"linger.ms": 20})
    for p in range(partitions):
        for i in range(RECORDS_PER_PARTITION):
            producer.produce(topic, value=f"{p}:{i}".encode(), partition=p)
        producer.poll(0)
    producer.flush(60)
    rng = random.Random(partitions)
    groups = [f"orders-bench-{uuid.uuid4().hex[:6]}" for _ in range(GROUPS)]
    for group in groups:
        offsets = [TopicPartition(topic, p, rng.randrange(RECORDS_PER_PARTITION)) for p in range(partitions)]
        east.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)])[group].result()
    deadline = time.monotonic() + 600
    while True:
        try:
            if verify_currency(topology, topics=[topic]).current:
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{topic} not mirrored in time")
        time.sleep(5)
    started = time.perf_counter()
    currency = verify_currency(topology, topics=[topic])
    currency_s = time.perf_counter() - started
    started = time.perf_counter()
    report = translate_offsets(topology, groups=groups, topics=[topic])
    translate_s = time.perf_counter() - started
    exact = sum(e.status == "ok" for e in report.entries)
    checkpoint = translate_offsets(topology, groups=groups, topics=[topic], method="checkpoint")
    mm2_dups = sum(e.duplicates_bound or 0 for e in checkpoint.entries if e.status == "ok")
    for admin, name in ((east, topic), (west, f"east.{topic}")):
        for future in admin.delete_topics([name]).values():
            future.result()
    return {"partitions": partitions, "groups": GROUPS, "currency_s": round(currency_s, 2),
            "translate_s": round(translate_s, 2), "current": currency.current,
            "entries": len(report.entries), "exact_ok": exact,
            "baton_duplicates": sum(e.duplicates_bound or 0 for e in report.entries),
            "mm2_checkpoint_duplicates": mm2_dups}


if __name__ == "__main__":
    topology = Lab().topology()[0]
    for size in [int(a) for a in sys.argv[1:]] or [10, 100]:
        print(run(size, topology), flush=True)
