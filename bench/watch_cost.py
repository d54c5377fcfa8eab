"""The watch's cost per sample at N partitions (wall and CPU), and the audit DB after a month.

Sample cost: a fresh domain whose one topic has N partitions (RECORDS per partition, mirrored,
two groups with positions), SAMPLES samples by one Sampler (clients kept, as the service does)
in each mode: idle (nothing moved), busy (one new record on every partition before each sample,
replication running) and full (no previous measurement: every partition verified from MM2's
offset syncs, as at the watch's start), then the readiness checks once. CPU is this process's (librdkafka's
threads included). Month: the steady state of the retention (the last 24 h raw at 5 s, 29
days of 1-minute maxima folded from raw samples) in a SQLite audit DB, rows carrying the
detail of a real sample; then one prune pass.

  BATON_HOME=... BATON_LAB_PORT_BASE=... .venv/bin/python bench/watch_cost.py 6 100 1000
  .venv/bin/python bench/watch_cost.py --month
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition

from baton.kafka.admin import admin_client, ensure_topics
from baton.lab.lab import Lab
from baton.replication import engine_for
from baton.watch.sampler import Sampler
from baton.watch.service import readiness_of

RECORDS = 5
SAMPLES = 10


def domain(topology, partitions: int, reuse: str | None = None):
    """A fresh bench domain, or (reuse: a topic a previous run kept) the same one again, so two
    versions of the sampler can be measured on the same partitions back to back."""
    topic = reuse or f"orders.wbench-{uuid.uuid4().hex[:6]}"
    groups = [f"orders-wbench-{topic[-6:]}-{i}" for i in range(2)]  # MM2 checkpoints orders-*
    audit = Path(tempfile.mkdtemp(prefix="baton-watch-bench-")) / "audit.db"  # not the lab's
    t = topology.model_copy(update={
        "domain": topology.domain.model_copy(update={"name": f"wbench-{partitions}", "topics": [topic],
                                                     "consumer_groups": groups}),
        "audit": topology.audit.model_copy(update={"database_url": f"sqlite:///{audit}"})})
    if reuse:
        return t
    for region in topology.regions.values():
        ensure_topics(admin_client(region), {topic: partitions})
    producer = Producer(topology.regions["east"].client_config("producer") | {"linger.ms": 20})
    for p in range(partitions):
        for i in range(RECORDS):
            producer.produce(topic, value=f"{p}:{i}".encode(), partition=p)
        producer.poll(0)
    producer.flush(60)
    east = admin_client(topology.regions["east"])
    for group in groups:
        offsets = [TopicPartition(topic, p, 2) for p in range(partitions)]
        east.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)])[group].result()
    return t


def wait_measured(t, partitions: int) -> int:
    """Until every record is mirrored and MM2's checkpoint count for the groups stops growing."""
    engine = engine_for(t)
    sampler = Sampler(t)
    deadline = time.monotonic() + 900
    previous = -1
    while time.monotonic() < deadline:
        sample = sampler.sample()
        checkpoints = len([k for k in engine.checkpoints("east", "west").items
                           if k[0] in t.domain.consumer_groups])
        if sample.records_at_risk == 0 and sample.partitions == partitions and checkpoints == previous:
            return checkpoints
        previous = checkpoints
        time.sleep(15)
    raise SystemExit(f"{partitions} partitions not mirrored in time")


def timed(sampler: Sampler, mode: str, move) -> tuple[float, float, object]:
    if mode == "busy":
        move()  # one new record on every partition since the previous sample
    elif mode == "full":
        sampler.forget_measurements()  # no previous measurement: every partition from offset syncs
    started, cpu = time.perf_counter(), time.process_time()
    sample = sampler.sample()
    return time.perf_counter() - started, time.process_time() - cpu, sample


def cost(partitions: int, topology, reuse: str | None = None) -> dict:
    t = domain(topology, partitions, reuse)
    checkpoints = wait_measured(t, partitions)
    sampler = Sampler(t)
    sampler.sample()  # resolve the scope once, as a running watch has
    result = {"partitions": partitions, "checkpoints": checkpoints}
    producer = Producer(t.regions["east"].client_config("producer") | {"linger.ms": 5})

    def move() -> None:
        for p in range(partitions):
            producer.produce(t.domain.topics[0], value=f"busy-{time.time()}".encode(), partition=p)
        producer.flush(60)

    for mode in ("idle", "busy", "full"):
        runs = [timed(sampler, mode, move) for _ in range(SAMPLES)]
        result[mode] = (statistics.median(r[0] for r in runs), max(r[0] for r in runs),
                        statistics.median(r[1] for r in runs))
        result[f"{mode}_how"] = getattr(sampler, "breakdown", None)  # of the last sample
    sample = runs[-1][2]
    started = time.perf_counter()
    readiness = readiness_of(sampler, sample)
    result |= {"readiness": time.perf_counter() - started, "records_at_risk": sample.records_at_risk,
               "failing": [c.name for c in readiness.checks if c.status == "fail"],
               "topic": t.domain.topics[0]}
    return result


def delete(topology, topic: str) -> None:
    """Thousands of partitions left behind exhaust the lab brokers' small heaps (seen: east OOM)."""
    mirror = topology.replication.remote_topic(topic, "east")
    for region, names in (("east", [topic]), ("west", [topic, mirror])):
        admin = admin_client(topology.regions[region])  # held: a collected client cancels its requests
        for name, future in admin.delete_topics(names, operation_timeout=60).items():
            try:
                future.result()
            except KafkaException as e:
                print(f"{name} on {region} not deleted: {e}", flush=True)


def month(detail: str) -> dict:
    from baton.audit import AuditStore
    from baton.audit.models import WatchSample
    from baton.watch.store import RAW, SampleStore, fold_minutes, insert_ignoring_duplicates

    path = Path(tempfile.mkdtemp(prefix="baton-watch-month-")) / "audit.db"
    store = SampleStore(AuditStore(f"sqlite:///{path}"))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    started = time.perf_counter()

    def raw_day(day_start: datetime) -> list[WatchSample]:
        rows = []
        for i in range(17_280):
            taken = day_start + timedelta(seconds=5 * i)
            rows.append(WatchSample(domain="orders", owner="east", secondary="west", resolution=RAW,
                                    slot=int(taken.timestamp() // 5), taken_at=taken, records_at_risk=i % 50,
                                    seconds_at_risk=(i % 50) / 10, unknown_partitions=0,
                                    replication_state="RUNNING", heartbeat_age_seconds=1.2, epoch=7,
                                    authority_state="ACTIVE", lease_seconds_left=10.0, readiness="pass",
                                    detail=detail))
        return rows

    for day in range(30, 1, -1):  # 29 days folded to minutes
        with store.audit.transaction() as session:
            insert_ignoring_duplicates(session, fold_minutes(raw_day(now - timedelta(days=day))))
    with store.audit.transaction() as session:  # the last 24 h raw
        insert_ignoring_duplicates(session, raw_day(now - timedelta(days=1)))
    build = time.perf_counter() - started
    started = time.perf_counter()
    pruned = store.prune(raw_hours=24, downsampled_days=30)
    prune_s = time.perf_counter() - started
    store.audit.engine.dispose()
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")
    return {"raw": store.count("orders", "raw"), "minutes": store.count("orders", "1m"),
            "bytes": path.stat().st_size, "detail_bytes": len(detail), "build_s": build,
            "prune_s": prune_s, "pruned": pruned}


def main() -> None:
    the_lab = Lab()
    topology = the_lab.topology()[0]
    if "--month" in sys.argv:
        sampler = Sampler(topology)
        sample = sampler.sample()
        from baton.watch.store import row_of

        detail = row_of(sample, readiness_of(sampler, sample)).detail
        result = month(detail)
        print(f"month at 5 s: {result['raw']} raw + {result['minutes']} minute rows, "
              f"{result['bytes'] / 1e6:.1f} MB (detail {result['detail_bytes']} B/row); "
              f"prune pass {result['prune_s']:.2f} s {result['pruned']}")
        return
    # WATCH_BENCH_REUSE=topic measures a topic a run with WATCH_BENCH_KEEP=1 left (one size).
    reuse, keep = os.environ.get("WATCH_BENCH_REUSE"), os.environ.get("WATCH_BENCH_KEEP") == "1"
    for partitions in [int(a) for a in sys.argv[1:]] or [6, 100, 1000]:
        r = cost(partitions, topology, reuse)
        figures = "; ".join(f"{mode}: wall median {r[mode][0]:.3f} s (max {r[mode][1]:.3f}), CPU "
                            f"{r[mode][2]:.3f} s {r[f'{mode}_how'] or ''}"
                            for mode in ("idle", "busy", "full"))
        print(f"{partitions:5} partitions: {figures}; readiness {r['readiness']:.3f} s; at risk "
              f"{r['records_at_risk']}; MM2 checkpoints {r['checkpoints']} of {2 * partitions}; "
              f"failing {r['failing']}; load {os.getloadavg()[0]:.1f}; topic {r['topic']}", flush=True)
        if not keep:
            delete(topology, r["topic"])


if __name__ == "__main__":
    main()
