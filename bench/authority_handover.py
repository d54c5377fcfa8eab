"""Authority hand-over figures on the running lab (started if needed):

1. fence -> first rejected write: `fence(topology, "east")` is called while an unguarded
   confluent-kafka producer (the domain's principal) writes one record at a time; the figure
   is the time from the call to the first TOPIC_AUTHORIZATION_FAILED delivery report.
2. hand-over gap: a GuardedProducer keeps trying to write while authority moves from
   FENCED (east) to ACTIVE (west); the figure is the time from the `change_authority` call
   to the first record the guarded producer accepts in west (and to its delivery).
   Target: <= 2 s + the producer's poll interval.

    BATON_HOME=... BATON_LAB_PORT_BASE=... .venv/bin/python bench/authority_handover.py [--rounds 5]

Each round uses a fresh domain and topic and a throwaway SQLite audit DB. Prints one JSON
line per round and a summary per measure (median, max).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaError, Producer


def fresh_domain(topology, audit_dir: Path):
    from baton.kafka.admin import admin_client, ensure_topics

    suffix = uuid.uuid4().hex[:8]
    topic = f"orders.bench-{suffix}"
    for region in topology.regions.values():
        ensure_topics(admin_client(region), {topic: 1})
    return topology.model_copy(update={
        "domain": topology.domain.model_copy(update={"name": f"bench-{suffix}", "topics": [topic]}),
        "thresholds": topology.thresholds.model_copy(update={"lease_ttl_seconds": 30}),
        "audit": topology.audit.model_copy(update={"database_url": f"sqlite:///{audit_dir / suffix}.db"}),
    })


def fence_to_first_rejection(topology) -> dict:
    from baton.kafka.fencing import fence, unfence

    topic = topology.domain.topics[0]
    producer = Producer(topology.regions["east"].client_config("producer") | {"linger.ms": 0})

    def write_one() -> KafkaError | None:
        outcome: dict = {}
        producer.produce(topic, value=b"x", on_delivery=lambda e, _m: outcome.setdefault("e", e))
        producer.flush(10)
        return outcome.get("e")

    assert write_one() is None, "the unguarded producer could not write before fencing"
    started = time.monotonic()
    fence(topology, "east")
    fence_call = time.monotonic() - started
    writes = 0
    while True:
        writes += 1
        error = write_one()
        if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            rejected = time.monotonic() - started
            break
        if time.monotonic() - started > 60:
            raise RuntimeError("no write was rejected within 60 s of fencing")
    unfence(topology, "east")
    return {"fence_call_s": round(fence_call, 3), "first_rejection_s": round(rejected, 3),
            "writes_until_rejected": writes}


def handover_gap(topology, poll_interval: float) -> dict:
    from baton.authority import State, authority_store, change_authority, initialize_authority
    from baton.client import GuardedProducer
    from baton.errors import WriteRefused

    store = authority_store(topology)
    initialize_authority(topology, store=store)
    topic = topology.domain.topics[0]
    producer = GuardedProducer(topology, poll_interval=poll_interval)
    try:
        deadline = time.monotonic() + 60
        while True:  # accepted in east first: the producer is following the control topics
            try:
                producer.produce(topic, value=b"east")
                break
            except WriteRefused:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        change_authority(topology, 1, "east", State.FENCED, store=store)
        while True:
            try:
                producer.produce(topic, value=b"late")
            except WriteRefused:
                break
            time.sleep(0.01)
        delivered: dict = {}
        started = time.monotonic()
        change_authority(topology, 2, "west", State.ACTIVE, store=store)
        change_call = time.monotonic() - started
        while True:
            try:
                grant = producer.produce(topic, value=b"west", on_delivery=lambda e, _m: delivered.setdefault(
                    "at", time.monotonic()) if e is None else None)
                accepted = time.monotonic() - started
                break
            except WriteRefused:
                if time.monotonic() - started > 60:
                    raise
                time.sleep(0.005)
        assert grant.region == "west" and grant.epoch == 3
        producer.flush(10)
        return {"poll_interval_s": poll_interval, "change_call_s": round(change_call, 3),
                "first_accepted_s": round(accepted, 3),
                "first_delivered_s": round(delivered["at"] - started, 3)}
    finally:
        producer.close(timeout=5)


def summary(name: str, values: list[float]) -> dict:
    return {"measure": name, "median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3),
            "rounds": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-intervals", default="0.25,1.0")
    args = parser.parse_args()
    from baton.lab.lab import Lab

    lab = Lab()
    if not all(p.pid() is not None for p in lab.processes.values()):
        lab.up()
    topology = lab.topology()[0]
    audit_dir = Path(tempfile.mkdtemp(prefix="baton-bench-audit-"))
    rejections, gaps = [], {float(p): [] for p in args.poll_intervals.split(",")}
    for round_number in range(args.rounds):
        fenced = fence_to_first_rejection(fresh_domain(topology, audit_dir))
        rejections.append(fenced["first_rejection_s"])
        print(json.dumps({"round": round_number + 1, "measure": "fence_to_first_rejection"} | fenced))
        for poll_interval, values in gaps.items():
            gap = handover_gap(fresh_domain(topology, audit_dir), poll_interval)
            values.append(gap["first_accepted_s"])
            print(json.dumps({"round": round_number + 1, "measure": "handover_gap"} | gap))
    print(json.dumps(summary("fence_to_first_rejection", rejections) | {"cores": os.cpu_count()}))
    for poll_interval, values in gaps.items():
        print(json.dumps(summary(f"handover_gap(poll {poll_interval:g}s)", values)
                         | {"target_s": 2 + poll_interval}))


if __name__ == "__main__":
    main()
